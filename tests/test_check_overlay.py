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


@pytest.mark.slow  # the tiny model through the installed command (-m "not slow" leaves it out)
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


# -- several sources ---------------------------------------------------------------


def test_overlay_shows_every_source_then_the_edited_image_with_the_boxes(photos):
    sources = [Image.open(photos[n]).convert("RGB") for n in ("coffee", "astronaut", "coffee_gray")]
    photo = Image.open(photos["coffee"]).convert("RGB")
    w, h = photo.size
    bbox_2d = [250, 300, 700, 800]
    edited = _with_blue_panel(photo, [round(v * s / 1000) for v, s in zip(bbox_2d, (w, h, w, h))])
    record = _record([{"id": 0, "label": "panel", "bbox_2d": bbox_2d}], (w, h))
    picture, layout = render_overlay(sources, edited, record)
    assert len(layout.source_origins) == 3 and layout.source_origin == layout.source_origins[0]
    xs = [x for x, _ in layout.source_origins] + [layout.edited_origin[0]]
    assert xs == sorted(xs) and len(set(xs)) == 4  # left to right in order, the edited panel last
    for source, (sx, sy), (sw, sh) in zip(sources, layout.source_origins, layout.source_sizes):
        assert sh == layout.edited_size[1] == h and sw == round(source.width * h / source.height)
        panel = picture.crop((sx, sy, sx + sw, sy + sh))
        assert _near(panel.getpixel((sw // 2, sh // 2)), source.resize((sw, sh)).getpixel((sw // 2, sh // 2)), 12)
    x1, y1, x2, y2 = layout.box(bbox_2d)
    assert x1 >= layout.edited_origin[0] and picture.getpixel((x1 + 1, (y1 + y2) // 2)) == region_colour(0)
    # one source: the picture it always was
    single, single_layout = render_overlay(sources[0], edited, _record([], (w, h)))
    listed, _ = render_overlay(sources[:1], edited, _record([], (w, h)))
    assert single.tobytes() == listed.tobytes() and single_layout.source_origins == (single_layout.source_origin,)
    assert single.width == 16 * 2 + sources[0].width + 16 + w


def test_check_with_several_sources(photos, tmp_path, monkeypatch):
    """`check SOURCE... EDITED INSTRUCTION`: every source, in order, then the
    edited image, under the multi-image prompt; the overlay shows them all."""
    from click.testing import CliRunner

    from spatialreward.commands import main
    from spatialreward.images import load_image
    from spatialreward.prompts import render_sc
    from spatialreward.testing.scripted import ScriptedBackend, image_digest

    seen = []
    real = ScriptedBackend.generate
    monkeypatch.setattr(ScriptedBackend, "generate",
                        lambda self, requests, *a, **k: seen.extend(requests) or real(self, requests, *a, **k))
    script = tmp_path / "script.json"
    script.write_text("{}")
    names = ("coffee", "astronaut", "coffee_gray")
    args = ["check", *(str(photos[n]) for n in names), str(photos["coffee_red_square"]), "Fuse them",
            "--backend", "scripted", "--model", str(script), "--threshold", "0"]
    result = CliRunner().invoke(main, [*args, "--json", "--overlay", str(tmp_path / "o.png")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "ok" and record["source"] == [str(photos[n]) for n in names]
    [sc] = [r for r in seen if r.kind == "sc"]
    assert sc.prompt == render_sc("Fuse them", "eval", 3)
    assert [image_digest(i) for i in sc.images] == [image_digest(load_image(photos[n]))
                                                    for n in (*names, "coffee_red_square")]
    sources = [Image.open(photos[n]) for n in names]
    expected, layout = render_overlay(sources, Image.open(photos["coffee_red_square"]), record)
    picture = Image.open(tmp_path / "o.png").convert("RGB")
    assert picture.size == expected.size and len(layout.source_origins) == 3
    x1, y1, x2, y2 = layout.box(record["regions"][0]["bbox_2d"])
    assert picture.getpixel((x1 + 1, (y1 + y2) // 2)) == region_colour(0)
    # a bad second source is named before any model loads; nine sources are a usage error
    bad = CliRunner().invoke(main, ["check", str(photos["coffee"]), str(tmp_path / "nope.png"),
                                    str(photos["coffee_red_square"]), "x", "--backend", "scripted",
                                    "--model", str(tmp_path / "no-model.json")])
    assert bad.exit_code == 3 and "source 2" in bad.output and "nope.png" in bad.output
    nine = CliRunner().invoke(main, ["check", *[str(photos["coffee"])] * 9, str(photos["coffee_red_square"]), "x",
                                     "--backend", "scripted", "--model", str(script)])
    assert nine.exit_code == 2 and "1 to 8" in nine.output
