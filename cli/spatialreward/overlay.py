"""The side-by-side overlay picture: source | edited with the predicted regions.

Layout: both panels are scaled to one height (the edited image's, capped at
``max_height``), source on the left, edited on the right; each region of the
record is drawn on the edited panel as a coloured rectangle with its number and
label. ``bbox_2d`` is 0..1000 of the edited image, so on the panel a box edge
lands at ``origin + bbox_2d / 1000 * panel size`` for any aspect ratio.
"""

from __future__ import annotations

import textwrap
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
    source_origin: tuple[int, int]
    source_size: tuple[int, int]

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


def render_overlay(source: Image.Image, edited: Image.Image, record: dict, *,
                   threshold: float = 0.5, max_height: int = 768) -> tuple[Image.Image, Layout]:
    """The overlay picture for ``record`` (a judge record) and its layout."""
    height = min(edited.height, max_height)
    src, ed = _scaled(source.convert("RGB"), height), _scaled(edited.convert("RGB"), height)
    font, small = _font(18), _font(15)
    width = MARGIN * 2 + src.width + GAP + ed.width
    caption = _caption(record, threshold)
    wrap = max(20, width // 9)
    lines = [line for text in caption for line in (textwrap.wrap(text, wrap) or [""])]
    caption_height = 12 + 22 * len(lines)
    picture = Image.new("RGB", (width, MARGIN + HEADER + height + caption_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top = MARGIN + HEADER
    layout = Layout(edited_origin=(MARGIN + src.width + GAP, top), edited_size=ed.size,
                    source_origin=(MARGIN, top), source_size=src.size)
    picture.paste(src, layout.source_origin)
    picture.paste(ed, layout.edited_origin)
    draw.text((MARGIN, MARGIN), "source", fill=INK, font=font)
    draw.text((layout.edited_origin[0], MARGIN), "edited", fill=INK, font=font)

    for index, region in enumerate(record.get("regions") or []):
        colour = region_colour(index)
        x1, y1, x2, y2 = layout.box(region["bbox_2d"])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=LINE_WIDTH)
        tag = f"{region.get('id', index)} {region.get('label', '')}".strip()
        left, tag_top, right, bottom = draw.textbbox((0, 0), tag, font=small)
        tag_w, tag_h = right - left + 8, bottom - tag_top + 6
        # the tag sits inside the box's top-left corner, clear of the outline
        tx = min(x1 + LINE_WIDTH, layout.edited_origin[0] + ed.width - tag_w)
        ty = min(y1 + LINE_WIDTH, top + height - tag_h)
        draw.rectangle([tx, ty, tx + tag_w, ty + tag_h], fill=colour)
        draw.text((tx + 4, ty + 3 - tag_top), tag, fill=(255, 255, 255), font=small)

    y = top + height + 12
    for line in lines:
        draw.text((MARGIN, y), line, fill=INK, font=small)
        y += 22
    return picture, layout


def _caption(record: dict, threshold: float) -> list[str]:
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
