#!/usr/bin/env python
"""Regenerate examples/: a few small real photos (scikit-image's bundled data),
edits of them made by code, and the manifest examples/edits.jsonl that the
README's "Try it without the 8B model" section judges.

    python scripts/make_examples.py            # rewrites examples/images/ and examples/edits.jsonl

Paths in the manifest are relative to the manifest's folder, so
``spatialreward judge examples/edits.jsonl`` works from the repository root
(and from anywhere else).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WIDTH = 288  # small enough to keep the folder well under 1 MB and a CPU run short


def _photo(name: str, crop=None):
    from PIL import Image
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    if crop:
        image = image.crop(crop)
    height = round(image.height * WIDTH / image.width)
    return image.resize((WIDTH, height), Image.LANCZOS)


def make(folder: Path) -> list[dict]:
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():
        old.unlink()

    def save(image, name: str) -> str:
        path = images / name
        if name.endswith(".jpg"):
            image.save(path, quality=88, optimize=True)
        else:
            image.save(path, optimize=True)
        return f"images/{name}"

    coffee = _photo("coffee")  # a cup of coffee, 288x192
    chelsea = _photo("chelsea")  # a cat, 288x192
    rocket = _photo("rocket")  # a rocket on its launch pad, 288x192
    astronaut = _photo("astronaut", crop=(100, 0, 400, 512))  # a portrait, 288x492

    red = coffee.copy()
    w, h = red.size
    ImageDraw.Draw(red).rectangle([round(w * 0.64), round(h * 0.3), round(w * 0.86), round(h * 0.65)],
                                  fill=(220, 20, 20))
    warm_r, warm_g, warm_b = astronaut.split()
    warmer = Image.merge("RGB", (warm_r.point(lambda v: min(255, int(v * 1.15))), warm_g,
                                 warm_b.point(lambda v: int(v * 0.85))))

    return [
        {"id": "coffee-red-square", "source": save(coffee, "coffee.png"),
         "edited": save(red, "coffee_red_square.png"),
         "instruction": "Add a red square on the right of the cup", "category": "add"},
        {"id": "cat-black-and-white", "source": save(chelsea, "cat.jpg"),
         "edited": save(ImageOps.grayscale(chelsea).convert("RGB"), "cat_gray.jpg"),
         "instruction": "Make the photo black and white", "category": "style"},
        {"id": "rocket-mirror", "source": save(rocket, "rocket.jpg"),
         "edited": save(ImageOps.mirror(rocket), "rocket_mirror.jpg"),
         "instruction": "Mirror the photo horizontally", "category": "global"},
        {"id": "astronaut-warmer", "source": save(astronaut, "astronaut.jpg"),
         "edited": [save(warmer, "astronaut_warm.jpg"),
                    save(astronaut.filter(ImageFilter.GaussianBlur(4)), "astronaut_blur.jpg"),
                    save(ImageEnhance.Color(astronaut).enhance(0.2), "astronaut_faded.jpg")],
         "instruction": "Make the colours warmer", "category": "style"},
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "examples", help="folder to write (default examples/)")
    args = parser.parse_args(argv)
    rows = make(args.out)
    manifest = args.out / "edits.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    total = sum(p.stat().st_size for p in (args.out / "images").iterdir())
    print(f"{manifest}: {len(rows)} lines; images {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
