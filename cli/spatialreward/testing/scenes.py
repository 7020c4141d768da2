"""A text-to-image spatial test set made by code, and a perfect grounder for it.

``make_scene_set(folder, n, seed)`` draws ``n`` scenes with Pillow (512x384):
a textured background (a wall/floor gradient of neutral, low-saturation tones,
low-frequency ripples, grey pebbles, soft shadows), two or three named objects
of distinct saturated colours ("red ball", "blue box", "green cone", "yellow
star", "purple ring", "orange diamond", ...), sometimes an unnamed distractor
of another colour, each object shaded by a gradient; then a slight blur and
per-pixel noise over everything. Each scene's prompt states one or two
relations ("a red ball to the left of a blue box, and a green cone above the
blue box"), worded with the synonyms of ``spatialreward.t2i`` (left of / to the
left of / on the left of, over, under, beneath, ...).

Every scene has a spatially perturbed twin, the same objects, colours and
background with:
  - ``swap``: the subject and object of the first relation exchange places
    (centres swapped), so that relation no longer holds; or
  - ``mirror`` (two-relation scenes, where it fits): the second relation's
    subject is reflected through its reference's centre, so that relation no
    longer holds.

Ground truth is exact: each object's box is its own drawn mask's extent, and
every relation's truth is GenEval's rule (``t2i.relative_position``) on the
pixel boxes. A layout is kept only when the rule gives the same answer on the
pixel boxes and on the 0..1000 boxes, the original's relations all hold, and
at least one of the twin's does not (layouts are drawn again until so).

Written under ``folder``: ``images/scene-NNNN.png`` and
``images/scene-NNNN-twin.png``, ``manifest.jsonl`` (image rows) and
``pairs.jsonl`` (pair rows). Deterministic for a seed (same rows, same bytes).

``ground_from_pixels(image, prompt)`` is what a perfect grounding model would
answer for such a scene, as the JSON text the t2i-spatial prompt asks for.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..constants import BBOX_RANGE, SCORE_RANGE
from ..t2i import SYNONYMS, canonical_relation, geometry_holds, relative_position

WIDTH, HEIGHT = 512, 384

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 40),
    "orange": (243, 138, 28),
    "yellow": (236, 212, 36),
    "green": (38, 158, 66),
    "blue": (40, 84, 212),
    "purple": (132, 52, 172),
}
SHAPES = ("ball", "box", "cone", "star", "ring", "diamond")

# How a scene words each canonical relation (all in t2i.SYNONYMS).
WORDINGS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_DIRECTION = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}

# Pixel classification (ground_from_pixels): chroma (max - min channel) at
# least this, and the nearest palette colour within this distance.
_MIN_CHROMA = 60
_MAX_DISTANCE = 50
_MIN_LINE = 1  # a row/column needs this many pixels of the colour to count
_MIN_PIXELS = 40  # fewer pixels of a colour: the object is not there


# ---------------------------------------------------------------- drawing

def _shape_mask(shape: str, box: tuple[int, int, int, int]) -> Image.Image:
    """A mask ("L") of the shape inscribed in the pixel box (x0, y0, x1, y1)."""
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "ball":
        draw.ellipse(box, fill=255)
    elif shape == "box":
        draw.rectangle(box, fill=255)
    elif shape == "cone":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        tx, ty = (x1 - x0) * 0.28, (y1 - y0) * 0.28
        draw.ellipse((x0 + tx, y0 + ty, x1 - tx, y1 - ty), fill=0)
    elif shape == "star":
        rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            scale = 1.0 if k % 2 == 0 else 0.45
            points.append((cx + rx * scale * math.cos(angle), cy + ry * scale * math.sin(angle)))
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _background(rng: np.random.Generator) -> np.ndarray:
    """A neutral wall/floor: two low-saturation tones, a horizon, ripples."""
    def tone(low, high):
        base = rng.integers(low, high)
        return np.array([base + rng.integers(-12, 13) for _ in range(3)], dtype=float)

    wall_top, wall_bottom = tone(150, 196), tone(125, 170)
    floor_top, floor_bottom = tone(110, 150), tone(90, 125)
    horizon = rng.uniform(0.45, 0.62) * HEIGHT
    y = np.arange(HEIGHT, dtype=float)[:, None, None]
    wall = wall_top + (wall_bottom - wall_top) * (y / horizon)
    floor = floor_top + (floor_bottom - floor_top) * ((y - horizon) / (HEIGHT - horizon))
    image = np.where(y < horizon, wall, floor) * np.ones((1, WIDTH, 1))
    xs, ys = np.meshgrid(np.arange(WIDTH, dtype=float), np.arange(HEIGHT, dtype=float))
    ripple = np.zeros((HEIGHT, WIDTH))
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.04), rng.uniform(0.005, 0.04), rng.uniform(0, 2 * math.pi)
        ripple += rng.uniform(2, 5) * np.sin(fx * xs + fy * ys + phase)
    return image + ripple[..., None]


def _mask_boxes(objects: list[dict]) -> dict[str, tuple[int, int, int, int]]:
    """Each named object's exact pixel box: its drawn mask's extent (left, top, right, bottom; exclusive)."""
    return {obj["name"]: _shape_mask(obj["shape"], obj["box"]).getbbox() for obj in objects if obj.get("name")}


def _render(objects: list[dict], background: np.ndarray, pebbles: list[tuple], rng: np.random.Generator
            ) -> Image.Image:
    """The scene image."""
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for (x, y, rx, ry, grey) in pebbles:
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(grey, grey, grey - 6))
    shadow = Image.new("L", (WIDTH, HEIGHT), 0)
    shadow_draw = ImageDraw.Draw(shadow)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        shadow_draw.ellipse((x0 + 4, y1 - (y1 - y0) * 0.12, x1 + 10, y1 + (y1 - y0) * 0.12), fill=110)
    shadow = shadow.filter(ImageFilter.GaussianBlur(4))
    canvas = Image.composite(Image.new("RGB", canvas.size, (40, 40, 44)), canvas, shadow.point(lambda v: v // 2))
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    for obj in objects:
        mask = _shape_mask(obj["shape"], obj["box"])
        x0, y0, x1, y1 = obj["box"]
        # a light-from-top-left shading gradient, 1.06 .. 0.92 of the colour
        t = np.clip(((xs - x0) / max(x1 - x0, 1) + (ys - y0) / max(y1 - y0, 1)) / 2, 0, 1)
        shade = (1.06 - 0.14 * t)[..., None] * np.array(COLOURS[obj["colour"]], dtype=float)
        layer = Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8), "RGB")
        canvas = Image.composite(layer, canvas, mask)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(canvas, dtype=float) + rng.normal(0, 5, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------- layout

def _normalised(box) -> list[float]:
    x0, y0, x1, y1 = box
    return [round(x0 * BBOX_RANGE / WIDTH, 1), round(y0 * BBOX_RANGE / HEIGHT, 1),
            round(x1 * BBOX_RANGE / WIDTH, 1), round(y1 * BBOX_RANGE / HEIGHT, 1)]


def _box_at(centre, size) -> tuple[int, int, int, int]:
    (cx, cy), (w, h) = centre, size
    return (int(round(cx - w / 2)), int(round(cy - h / 2)), int(round(cx + w / 2)), int(round(cy + h / 2)))


def _fits(box, others, pad=10) -> bool:
    x0, y0, x1, y1 = box
    if x0 < 6 or y0 < 6 or x1 > WIDTH - 6 or y1 > HEIGHT - 6:
        return False
    return all(x1 + pad <= o[0] or o[2] + pad <= x0 or y1 + pad <= o[1] or o[3] + pad <= y0 for o in others)


def _size(rng, shape) -> tuple[float, float]:
    side = rng.uniform(44, 92)
    if shape in ("ball", "ring", "star"):
        return side, side
    return side * rng.uniform(0.75, 1.3), side * rng.uniform(0.75, 1.3)


def _place(rng, reference, relation, size, others):
    """A centre for an object ``relation`` its reference's centre, or None."""
    rcx, rcy = (reference[0] + reference[2]) / 2, (reference[1] + reference[3]) / 2
    ux, uy = _DIRECTION[relation]
    extent = ((reference[2] - reference[0]) + size[0]) / 2 if ux else ((reference[3] - reference[1]) + size[1]) / 2
    distance = extent + rng.uniform(18, 90)
    jitter = rng.uniform(-0.3, 0.3) * distance
    centre = (rcx + ux * distance + uy * jitter, rcy + uy * distance + ux * jitter)
    box = _box_at(centre, size)
    return centre if _fits(box, others) else None


def _truths(relations, boxes) -> list[bool]:
    """Each relation's truth by GenEval's rule, which must be the same on the
    pixel and on the 0..1000 boxes (else None: the layout is redrawn)."""
    truths = []
    for subject, canonical, obj in relations:
        pixel = canonical in relative_position(boxes[subject], boxes[obj])
        grid = canonical in relative_position(_normalised(boxes[subject]), _normalised(boxes[obj]))
        if pixel != grid:
            return None
        truths.append(pixel)
    return truths


def _layout(rng: np.random.Generator):
    """(objects, relations as (subject, canonical, object), twin objects,
    perturbation), or None when this draw did not fit."""
    count = 2 if rng.random() < 0.5 else 3
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    named = [{"colour": colours[k], "shape": shapes[k], "name": f"{colours[k]} {shapes[k]}"} for k in range(count)]
    canonicals = list(_DIRECTION)
    first = str(rng.choice(canonicals))
    reference = named[1]
    reference["size"] = _size(rng, reference["shape"])
    reference["centre"] = (rng.uniform(140, WIDTH - 140), rng.uniform(110, HEIGHT - 110))
    reference["box"] = _box_at(reference["centre"], reference["size"])
    relations = [(named[0]["name"], first, reference["name"])]
    subject = named[0]
    subject["size"] = _size(rng, subject["shape"])
    subject["centre"] = _place(rng, reference["box"], first, subject["size"], [reference["box"]])
    if subject["centre"] is None:
        return None
    subject["box"] = _box_at(subject["centre"], subject["size"])
    if count == 3:
        third = named[2]
        third["size"] = _size(rng, third["shape"])
        for _ in range(12):  # a third object is harder to fit: try several relations and references
            second = str(rng.choice(canonicals))
            target = named[int(rng.integers(0, 2))]
            third["centre"] = _place(rng, target["box"], second, third["size"], [subject["box"], reference["box"]])
            if third["centre"] is not None:
                break
        else:
            return None
        third["box"] = _box_at(third["centre"], third["size"])
        relations.append((third["name"], second, target["name"]))
    objects = list(named)
    if rng.random() < 0.6:  # an unnamed distractor of an unused colour
        spare = {"colour": colours[count], "shape": shapes[count], "name": None}
        spare["size"] = _size(rng, spare["shape"])
        centre = (rng.uniform(60, WIDTH - 60), rng.uniform(60, HEIGHT - 60))
        box = _box_at(centre, spare["size"])
        if _fits(box, [o["box"] for o in objects], pad=16):
            spare["centre"], spare["box"] = centre, box
            objects.append(spare)
    # the twin: a mirror where it fits (two-relation scenes, 70% of the time), else a swap
    kinds = ["mirror", "swap"] if count == 3 and rng.random() < 0.7 else ["swap"]
    for perturbation in kinds:
        twin = _perturb(objects, relations, perturbation)
        if twin is not None:
            return objects, relations, twin, perturbation
    return None


def _perturb(objects: list[dict], relations, perturbation: str) -> list[dict] | None:
    """The objects after ``perturbation``, or None when they no longer fit."""
    twin = [dict(o) for o in objects]
    if perturbation == "mirror":
        mover = next(o for o in twin if o["name"] == relations[1][0])
        anchor = next(o for o in twin if o["name"] == relations[1][2])
        # reflect through the centre of the reference's (rounded) box
        acx, acy = (anchor["box"][0] + anchor["box"][2]) / 2, (anchor["box"][1] + anchor["box"][3]) / 2
        mover["centre"] = (2 * acx - mover["centre"][0], 2 * acy - mover["centre"][1])
    else:
        a = next(o for o in twin if o["name"] == relations[0][0])
        b = next(o for o in twin if o["name"] == relations[0][2])
        a["centre"], b["centre"] = b["centre"], a["centre"]
    for o in twin:
        o["box"] = _box_at(o["centre"], o["size"])
    for k, o in enumerate(twin):
        if not _fits(o["box"], [p["box"] for j, p in enumerate(twin) if j != k], pad=4):
            return None
    return twin


def _prompt(rng, relations) -> tuple[str, list[list[str]]]:
    stated = []
    clauses = []
    for index, (subject, canonical, obj) in enumerate(relations):
        wording = str(rng.choice(WORDINGS[canonical]))
        stated.append([subject, wording, obj])
        article = "the" if index and obj in (relations[0][0], relations[0][2]) else "a"
        clauses.append(f"a {subject} {wording} {article} {obj}")
    opening = str(rng.choice(["", "a photo of ", "a simple 3D render of "]))
    return opening + clauses[0] + (f", and {clauses[1]}" if len(clauses) > 1 else ""), stated


def make_scene_set(folder, n: int, seed: int = 0) -> list[dict]:
    """Draw ``n`` scenes and their perturbed twins under ``folder`` (see the
    module docstring). Returns the ``2n`` image rows, then the ``n`` pair rows
    (also written to ``manifest.jsonl`` and ``pairs.jsonl``):

    - image row: ``{"id", "prompt", "image", "relations", "holds", "boxes",
      "perturbation"}``; ``image`` relative to ``folder``; ``relations`` the
      prompt's ``[[subject, relation as worded, object], ...]``; ``holds`` their
      truth (all true for an original; the twin's by GenEval's rule);
      ``boxes`` each named object's true box on the 0..1000 grid;
      ``perturbation`` None for an original, ``"swap"``/``"mirror"`` for a twin.
    - pair row: ``{"id", "prompt", "chosen", "rejected", "perturbation"}``
      (the original is chosen over its twin).
    """
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, pairs = [], []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        while True:
            layout = _layout(rng)
            if layout is None:
                continue
            objects, relations, twin, perturbation = layout
            boxes, twin_boxes = _mask_boxes(objects), _mask_boxes(twin)
            truths, twin_truths = _truths(relations, boxes), _truths(relations, twin_boxes)
            if truths is not None and twin_truths is not None and all(truths) and not all(twin_truths):
                break
        background = _background(rng)
        pebbles = [(float(rng.uniform(0, WIDTH)), float(rng.uniform(HEIGHT * 0.55, HEIGHT)),
                    float(rng.uniform(4, 14)), float(rng.uniform(3, 8)), int(rng.integers(70, 120)))
                   for _ in range(int(rng.integers(2, 6)))]
        noise_seed = int(rng.integers(0, 2**31))
        original = _render(objects, background, pebbles, np.random.default_rng(noise_seed))
        perturbed = _render(twin, background, pebbles, np.random.default_rng(noise_seed + 1))
        prompt, stated = _prompt(rng, relations)
        name = f"scene-{index:04d}"
        for suffix, image, row_boxes, holds, kind in (("", original, boxes, truths, None),
                                                     ("-twin", perturbed, twin_boxes, twin_truths, perturbation)):
            path = f"images/{name}{suffix}.png"
            image.save(root / path, format="PNG", compress_level=1)
            images.append({"id": name + suffix, "prompt": prompt, "image": path, "relations": stated,
                           "holds": holds, "boxes": {label: _normalised(b) for label, b in row_boxes.items()},
                           "perturbation": kind})
        pairs.append({"id": name, "prompt": prompt, "chosen": f"images/{name}.png",
                      "rejected": f"images/{name}-twin.png", "perturbation": perturbation})
    for filename, rows in (("manifest.jsonl", images), ("pairs.jsonl", pairs)):
        with open(root / filename, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return images + pairs


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(image rows, pair rows) of ``make_scene_set``'s list."""
    return [r for r in rows if "image" in r], [r for r in rows if "chosen" in r]


# ------------------------------------------------------- perfect grounding

_OBJECT = rf"(?:{'|'.join(COLOURS)})\s+(?:{'|'.join(SHAPES)})"
_RELATION = "|".join(re.escape(p) for p in sorted(SYNONYMS, key=len, reverse=True))
_CLAUSE = re.compile(rf"\b({_OBJECT})\s+(?:is\s+|are\s+)?({_RELATION})\s+(?:a|an|the)\s+(?=({_OBJECT})\b)",
                     re.IGNORECASE)
_OBJECT_RE = re.compile(rf"\b{_OBJECT}\b", re.IGNORECASE)


def _classify(pixels: np.ndarray) -> np.ndarray:
    """Per pixel: the index of its palette colour in ``COLOURS``, or -1."""
    chroma = pixels.max(axis=2) - pixels.min(axis=2)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    distances = np.sqrt(((pixels[..., None, :] - palette) ** 2).sum(axis=-1))
    nearest = distances.argmin(axis=-1)
    close = np.take_along_axis(distances, nearest[..., None], axis=-1)[..., 0] <= _MAX_DISTANCE
    return np.where((chroma >= _MIN_CHROMA) & close, nearest, -1)


def _find(classes: np.ndarray, colour: str) -> tuple[int, int, int, int] | None:
    """The pixel box (exclusive right/bottom) of the pixels of ``colour``."""
    mask = classes == list(COLOURS).index(colour)
    if mask.sum() < _MIN_PIXELS:
        return None
    cols = np.flatnonzero(mask.sum(axis=0) >= _MIN_LINE)
    rows = np.flatnonzero(mask.sum(axis=1) >= _MIN_LINE)
    if not len(cols) or not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def ground_from_pixels(image: Image.Image, prompt: str) -> str:
    """What a perfect grounding model answers for a scene of this module: each
    object the prompt names ("<colour> <shape>", in prompt order) found by its
    colour in the pixels and boxed on the 0..1000 grid (``null`` when absent);
    each relation the prompt states (subject, wording, object) with ``holds``
    from those boxes by GenEval's rule in the image's pixels (false when an
    object is missing); ``score`` = [25 * share of relations holding, 25 *
    share of objects found] (25 where the prompt names none), two decimals.
    Returned as the JSON text the t2i-spatial prompt asks for."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]
    classes = _classify(pixels)
    names = []
    for match in _OBJECT_RE.finditer(prompt):
        name = " ".join(match.group(0).lower().split())
        if name not in names:
            names.append(name)
    pixel_boxes = {name: _find(classes, name.split()[0]) for name in names}

    def grid(box):
        x0, y0, x1, y1 = box
        return [round(x0 * BBOX_RANGE / width), round(y0 * BBOX_RANGE / height),
                round(x1 * BBOX_RANGE / width), round(y1 * BBOX_RANGE / height)]

    objects = [{"label": name, "bbox_2d": None if pixel_boxes[name] is None else grid(pixel_boxes[name])}
               for name in names]
    relations = []
    for match in _CLAUSE.finditer(prompt):
        subject, wording, obj = (" ".join(g.lower().split()) for g in match.groups())
        holds = geometry_holds(canonical_relation(wording), pixel_boxes.get(subject), pixel_boxes.get(obj))
        relations.append({"subject": subject, "relation": wording, "object": obj, "holds": bool(holds)})
    found = sum(box is not None for box in pixel_boxes.values())
    holding = sum(r["holds"] for r in relations)
    spatial = SCORE_RANGE * holding / len(relations) if relations else SCORE_RANGE
    presence = SCORE_RANGE * found / len(names) if names else SCORE_RANGE
    reasoning = (f"{found} of {len(names)} named objects found; "
                 f"{holding} of {len(relations)} stated relations hold.")
    return json.dumps({"objects": objects, "relations": relations, "reasoning": reasoning,
                       "score": [round(spatial, 2), round(presence, 2)]})
