"""The side-by-side overlay picture: source(s) | edited with the predicted regions.

Layout: every panel is scaled to one height (the edited image's, capped at
``max_height``), the source on the left (several sources: each in its own
panel, "source 1", "source 2", ... in their order), the edited image on the
right; each region of the record is drawn on the edited panel as a coloured
rectangle with its number and label. ``bbox_2d`` is 0..1000 of the edited
image, so on the panel a box edge lands at ``origin + bbox_2d / 1000 * panel
size`` for any aspect ratio.

A text-to-image record (``"kind": "t2i"``) has no source: ``source`` None
gives the image alone ("image"), with each object the model found drawn as a
box with its label, and a caption of the prompt, the reward, the raw scores
and each relation's verdicts (model / geometry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
]
MARGIN, GAP, HEADER = 16, 16, 28
LINE_WIDTH = 3
BACKGROUND = (250, 250, 250)
INK = (20, 20, 20)


def region_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Layout:
    edited_origin: tuple[int, int]  # top-left of the edited panel in the picture
    edited_size: tuple[int, int]  # its size in the picture
    source_origin: tuple[int, int]  # the (first) source panel
    source_size: tuple[int, int]
    source_origins: tuple[tuple[int, int], ...] = ()  # every source panel, in order
    source_sizes: tuple[tuple[int, int], ...] = ()

    def box(self, bbox_2d) -> tuple[int, int, int, int]:
        """Picture pixels of a 0..1000 box of the edited image."""
        (ox, oy), (w, h) = self.edited_origin, self.edited_size
        x1, y1, x2, y2 = bbox_2d
        return (ox + round(x1 * w / 1000), oy + round(y1 * h / 1000),
                ox + round(x2 * w / 1000), oy + round(y2 * h / 1000))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _scaled(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def render_overlay(source, edited: Image.Image, record: dict, *,
                   threshold: float = 0.5, max_height: int = 768) -> tuple[Image.Image, Layout]:
    """The overlay picture for ``record`` (a judge record) and its layout.
    ``source``: one image, or a list of an edit's source images in order; None
    (or an empty list) for a text-to-image record: the image alone."""
    t2i = record.get("kind") == "t2i"
    if source is None:
        sources = []
    else:
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
    height = min(edited.height, max_height)
    srcs = [_scaled(image.convert("RGB"), height) for image in sources]
    ed = _scaled(edited.convert("RGB"), height)
    font, small = _font(18), _font(15)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tags = [_tag(region, index, t2i) for index, region in enumerate(_boxes(record))]
    caption = _caption(record, threshold)
    panels = MARGIN * 2 + sum(src.width + GAP for src in srcs) + ed.width
    # Wide enough for every tag and every caption word: nothing is cut at the picture's edge.
    widest = max([_text_width(measure, tag, small) + 8 for tag in tags]
                 + [_text_width(measure, word, small) for text in caption for word in text.split()] + [0])
    width = max(panels, widest + 2 * MARGIN)
    lines = [line for text in caption for line in _wrap(measure, text, small, width - 2 * MARGIN)]
    caption_height = 12 + 22 * len(lines)
    picture = Image.new("RGB", (width, MARGIN + HEADER + height + caption_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top = MARGIN + HEADER
    origins, x = [], MARGIN
    for src in srcs:
        origins.append((x, top))
        x += src.width + GAP
    layout = Layout(edited_origin=(x, top), edited_size=ed.size,
                    source_origin=origins[0] if origins else (x, top), source_size=srcs[0].size if srcs else (0, 0),
                    source_origins=tuple(origins), source_sizes=tuple(src.size for src in srcs))
    for k, (src, origin) in enumerate(zip(srcs, origins)):
        picture.paste(src, origin)
        draw.text((origin[0], MARGIN), "source" if len(srcs) == 1 else f"source {k + 1}", fill=INK, font=font)
    picture.paste(ed, layout.edited_origin)
    draw.text((layout.edited_origin[0], MARGIN), "image" if not srcs else "edited", fill=INK, font=font)

    for index, (region, tag) in enumerate(zip(_boxes(record), tags)):
        colour = region_colour(index)
        x1, y1, x2, y2 = layout.box(region["bbox_2d"])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=LINE_WIDTH)
        left, tag_top, right, bottom = draw.textbbox((0, 0), tag, font=small)
        tag_w, tag_h = right - left + 8, bottom - tag_top + 6
        # The tag sits inside the box's top-left corner, clear of the outline,
        # moved left (then down) as far as needed to stay whole in the picture.
        tx = min(x1 + LINE_WIDTH, layout.edited_origin[0] + ed.width - tag_w, width - 1 - tag_w)
        tx = max(tx, 0)
        ty = max(min(y1 + LINE_WIDTH, top + height - tag_h), 0)
        draw.rectangle([tx, ty, tx + tag_w, ty + tag_h], fill=colour)
        draw.text((tx + 4 - left, ty + 3 - tag_top), tag, fill=(255, 255, 255), font=small)

    y = top + height + 12
    for line in lines:
        draw.text((MARGIN, y), line, fill=INK, font=small)
        y += 22
    return picture, layout


def _tag(region: dict, index: int, t2i: bool) -> str:
    label = region.get("label", "")
    return (f"{label}" if t2i else f"{region.get('id', index)} {label}").strip()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces only
    (never inside a word, "over-editing" included)."""
    lines, line, gap = [], "", ""
    for word, spaces in re.findall(r"(\S+)(\s*)", text):  # the spaces between words kept as written
        candidate = f"{line}{gap}{word}"
        if line and _text_width(draw, candidate, font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
        gap = spaces
    return lines + [line] if line or not lines else lines


def _boxes(record: dict) -> list[dict]:
    """What is drawn: an edit record's regions, a t2i record's objects that
    have a box (``label``, ``bbox_2d``)."""
    if record.get("kind") != "t2i":
        return record.get("regions") or []
    return [item for item in record.get("objects") or () if isinstance(item, dict)
            and isinstance(item.get("bbox_2d"), list) and len(item["bbox_2d"]) == 4]


def _yes_no(value) -> str:
    return "yes" if value is True else "no" if value is False else "-"


def _t2i_caption(record: dict, threshold: float) -> list[str]:
    lines = [f"Prompt: {record.get('instruction')}"]
    if record.get("status") != "ok":
        error = record.get("error") or {}
        return lines + [f"Not judged: {error.get('stage')} error: {error.get('message')}"]
    verdict = "PASS" if record["reward"] >= threshold else "FAIL"
    scores = record.get("scores") or {}
    parts = record.get("t2i") or {}
    fraction = parts.get("verified_fraction")
    lines.append(f"Reward {record['reward']:.3f} ({verdict} at {threshold:g})   spatial {scores.get('spatial', 0):g}/25  "
                 f"presence {scores.get('presence', 0):g}/25   verified "
                 + ("-" if fraction is None else f"{fraction:.2f}"))
    for rel in record.get("relations") or []:
        lines.append(f"{rel.get('subject')} {rel.get('relation')} {rel.get('object')}: model {_yes_no(rel.get('model'))}, "
                     f"geometry {_yes_no(rel.get('geometry'))}, decided by {rel.get('decided_by')}")
    return lines


def _caption(record: dict, threshold: float) -> list[str]:
    if record.get("kind") == "t2i":
        return _t2i_caption(record, threshold)
    lines = [f"Instruction: {record.get('instruction')}"]
    if record.get("status") == "ok":
        verdict = "PASS" if record["reward"] >= threshold else "FAIL"
        s = record["scores"]
        lines.append(
            f"Reward {record['reward']:.3f} ({verdict} at {threshold:g})   SC {record['sc']:.2f}  PQ {record['pq']:.2f}   "
            f"success {s['success']:g}  over-editing {s['overediting']:g}  naturalness {s['naturalness']:g}  "
            f"artifacts {s['artifacts']:g}"
        )
    else:
        error = record.get("error") or {}
        lines.append(f"Not judged: {error.get('stage')} error: {error.get('message')}")
    return lines
