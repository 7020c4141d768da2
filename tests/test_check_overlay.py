"""`spatialreward check`, its readable verdict, and the overlay picture."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from conftest import FAST, run_cli
from spatialreward.explain import readable_reasoning, verdict_lines
from spatialreward.overlay import LINE_WIDTH, region_colour, render_overlay

BLUE = (0, 0, 255)


def _record(regions, size, reward=0.7):
    return {
        "instruction": "Add a blue panel", "status": "ok", "reward": reward, "sc": 7.0, "pq": 7.0,
        "scores": {"success": 20, "overediting": 15, "naturalness": 18, "artifacts": 17},
        "regions": regions, "edited_size": list(size), "reasoning": {"sc": "", "pq": ""},
    }


def _with_blue_panel(photo: Image.Image, box_px):
    image = photo.copy()
    ImageDraw.Draw(image).rectangle(box_px, fill=BLUE)
    return image


def _near(pixel, colour, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


@pytest.mark.parametrize("name,resize", [
    ("coffee", None),                # landscape 600x400, drawn at native size
    ("astronaut", None),             # portrait 300x512
    ("coffee", (1800, 1200)),        # large landscape, scaled down to the 768 px panel height
    ("astronaut", (450, 1536)),      # tall portrait, scaled down
])
def test_boxes_land_on_the_edited_pixels(photos, name, resize):
    """A blue panel painted at known pixels, and a region whose bbox_2d is that
    panel: the outline must hug the panel in the picture, for any aspect ratio."""
    photo = Image.open(photos[name]).convert("RGB")
    if resize:
        photo = photo.resize(resize)
    w, h = photo.size
    bbox_2d = [250, 300, 700, 800]
    box_px = [round(v * s / 1000) for v, s in zip(bbox_2d, (w, h, w, h))]
    edited = _with_blue_panel(photo, box_px)
    picture, layout = render_overlay(photo, edited, _record([{"id": 0, "label": "panel", "bbox_2d": bbox_2d}], (w, h)))
    assert layout.edited_size[1] == min(h, 768)
    x1, y1, x2, y2 = layout.box(bbox_2d)
    colour = region_colour(0)
    mid_y, mid_x = (y1 + y2) // 2, (x1 + x2) // 2
    # the outline is on the panel's edges ...
    for point in [(x1 + 1, mid_y), (x2 - 1, mid_y), (mid_x, y2 - 1), (mid_x, y1 + 1)]:
        assert picture.getpixel(point) == colour, point
    # ... the blue panel is just inside it ...
    for point in [(x1 + LINE_WIDTH + 3, mid_y), (x2 - LINE_WIDTH - 3, mid_y), (mid_x, y2 - LINE_WIDTH - 3)]:
        assert _near(picture.getpixel(point), BLUE), point
    # ... and the photo, not blue, is just outside
    for point in [(x1 - 4, mid_y), (x2 + 4, mid_y), (mid_x, y2 + 4), (mid_x, y1 - 4)]:
        assert not _near(picture.getpixel(point), BLUE), point
    # the source panel shows no box and no blue panel
    sx, sy = layout.source_origin
    sw, sh = layout.source_size
    assert not _near(picture.getpixel((sx + sw * 475 // 1000, sy + sh * 550 // 1000)), BLUE)


def test_several_regions_get_distinct_colours(photos):
    photo = Image.open(photos["coffee"]).convert("RGB")
    regions = [{"id": 0, "label": "a", "bbox_2d": [0, 0, 300, 300]},
               {"id": 1, "label": "b", "bbox_2d": [500, 500, 1000, 1000]}]
    picture, layout = render_overlay(photo, photo, _record(regions, photo.size))
    for index, region in enumerate(regions):
        x1, y1, x2, y2 = layout.box(region["bbox_2d"])
        assert picture.getpixel((x1 + 1, (y1 + y2) // 2)) == region_colour(index)
    assert region_colour(0) != region_colour(1)


def test_readable_reasoning_names_the_regions():
    regions = [{"id": 0, "label": "the dog"}, {"id": 1, "label": "grass"}]
    text = "<|bbox_0|> The dog is gone. <|bbox_1|> Grass was filled in. <|bbox_7|> odd. <|global|> Clean."
    assert readable_reasoning(text, regions) == (
        "[region 0: the dog] The dog is gone. [region 1: grass] Grass was filled in. [region 7] odd. Overall: Clean."
    )
    assert readable_reasoning(None, regions) == ""


def test_verdict_lines_show_scores_regions_and_errors():
    record = _record([{"id": 0, "label": "panel", "bbox_2d": [1, 2, 3, 4], "bbox_px": [6, 8, 18, 16]}], (600, 400))
    text = "\n".join(verdict_lines(record, 0.5))
    assert "reward 0.700  PASS" in text and "success 20/25" in text and "artifacts 17/25" in text
    assert "[0] panel: (6, 8) - (18, 16)" in text
    assert "FAIL" in "\n".join(verdict_lines(record, 0.8))
    error = {"instruction": "x", "status": "error", "error": {"stage": "parse", "message": "no JSON"}}
    assert "ERROR (parse): no JSON" in "\n".join(verdict_lines(error, 0.5))


def test_check_command_end_to_end(photos, tiny_model, tmp_path):
    args = ["check", photos["coffee"], photos["coffee_red_square"], "Add a red square",
            "--model", tiny_model, "--structured", "always", *FAST]
    shown = run_cli(*args, "--threshold", "0", "--overlay", tmp_path / "overlay.png")
    assert shown.returncode == 0, shown.stderr
    assert "PASS" in shown.stdout and "success" in shown.stdout and "SC reasoning:" in shown.stdout

    as_json = run_cli(*args, "--json", "--threshold", "1.0")
    record = json.loads(as_json.stdout)
    assert as_json.returncode == (0 if record["reward"] >= 1.0 else 1)
    assert record["status"] == "ok" and record["edited"] == str(photos["coffee_red_square"])
    assert record["config_hash"] and set(record["scores"]) == {"success", "overediting", "naturalness", "artifacts"}

    picture = Image.open(tmp_path / "overlay.png").convert("RGB")
    source = Image.open(photos["coffee"])
    _, layout = render_overlay(source, Image.open(photos["coffee_red_square"]), record)
    assert picture.size == _.size
    for index, region in enumerate(record["regions"]):
        x1, y1, x2, y2 = layout.box(region["bbox_2d"])
        assert picture.getpixel((x1 + 1, (y1 + y2) // 2)) == region_colour(index)


def test_check_exit_code_for_an_edit_that_cannot_be_judged(photos, tiny_model, tmp_path):
    result = run_cli("check", photos["coffee"], tmp_path / "missing.png", "Add a red square",
                     "--model", tiny_model, *FAST)
    assert result.returncode == 3
    assert "missing.png" in result.stderr and "file not found" in result.stderr
