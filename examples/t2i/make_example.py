"""How this folder was made (run from the repository root to remake it):

    .venv/bin/python examples/t2i/make_example.py

``spatialreward.testing.scenes.make_scene_set`` draws the scenes (512x384)
and their spatially perturbed twins; to keep the folder small each image is
then scaled to 256x192 and stored as a 64-colour PNG (octree palette, no
dithering: the objects keep their colours). ``t2i.jsonl`` holds the
image rows (``relations`` and their ground truth ``holds``; ``boxes``: the true
boxes on the 0..1000 grid, as drawn), ``pairs.jsonl`` the pairs (the original
chosen over its twin) with the prompt's ``relations``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from spatialreward.testing.scenes import make_scene_set, split_rows

HERE = Path(__file__).resolve().parent
SCENES, SEED, SIZE, COLOURS = 4, 6, (256, 192), 64


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images, pairs = split_rows(make_scene_set(tmp, SCENES, seed=SEED))
        shutil.rmtree(HERE / "images", ignore_errors=True)
        (HERE / "images").mkdir()
        for row in images:
            with Image.open(Path(tmp) / row["image"]) as image:
                small = image.convert("RGB").resize(SIZE, Image.LANCZOS).quantize(
                    COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
                small.save(HERE / row["image"], format="PNG", optimize=True)
    relations = {row["id"]: row["relations"] for row in images}
    pairs = [{**pair, "relations": relations[pair["id"]]} for pair in pairs]
    for name, rows in (("t2i.jsonl", images), ("pairs.jsonl", pairs)):
        (HERE / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
