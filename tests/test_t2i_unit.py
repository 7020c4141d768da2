"""Text-to-image spatial judging (spatialreward.t2i) and its code-drawn test
set (spatialreward.testing.scenes): prompt, GenEval's position rule, parser,
verification, reward. Fast: no model."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from spatialreward.errors import ConfigError, ParseError
from spatialreward.t2i import (
    MODEL_RELATIONS, RELATIONS_2D, SYNONYMS, T2IAnswer, T2IObject, T2IRelation, T2IWeights, canonical_relation,
    geometry_holds, is_2d, parse_t2i, prompt_of, relative_position, render_t2i, same_label, t2i_reward,
    t2i_reward_parts, t2i_template, verify,
)
from spatialreward.testing.scenes import HEIGHT, WIDTH, ground_from_pixels, make_scene_set, split_rows

TEMPLATE_SHA256 = "0077cfb69414d8754daed8a6e428e5bd4d601f41823dfb478f1473a5133d5acd"
EXAMPLE_SHA256 = "eca6223e2ea0696d8c534924bb1eebd7a51d563835e52388b259400fe3218365"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ prompt

def test_template_pinned():
    assert sha256(t2i_template()) == TEMPLATE_SHA256
    assert sha256(render_t2i("a red ball to the left of a blue box")) == EXAMPLE_SHA256


def test_one_space_changes_the_hash():
    text = t2i_template()
    assert sha256(text.replace("ONE JSON", "ONE  JSON", 1)) != TEMPLATE_SHA256
    assert sha256(text + " ") != TEMPLATE_SHA256


def test_render_fills_the_slot_verbatim():
    prompt = "a {weird} cat {prompt} above a dog"
    text = render_t2i(prompt)
    assert text.endswith("Text-to-image prompt: " + prompt + "\n")
    assert t2i_template().count("{prompt}") == 1
    assert '"bbox_2d": null' in text and "[0, 1000]" in text and "score" in text
    assert prompt_of(text) == prompt
    assert prompt_of(render_t2i("line one\nText-to-image prompt: x")) == "line one\nText-to-image prompt: x"


# ---------------------------------------------------------------- geometry

A = [0, 0, 100, 100]


def row(x):  # B shifted right by x: threshold 0.1 * (100 + 100) = 20 on x
    return [x, 0, x + 100, 100]


def col(y):
    return [0, y, 100, y + 100]


def test_horizontal_margin_edges():
    # dx = -(x - 20) / x: "left of" iff it is strictly below -0.5, i.e. x > 40
    assert relative_position(A, row(20)) == set()  # revised offset 0: no relation at all
    assert relative_position(A, row(39)) == set()
    assert relative_position(A, row(40)) == set()  # exactly -0.5: strict comparison
    assert relative_position(A, row(41)) == {"left of"}  # boxes still overlap: GenEval's rule allows it
    assert relative_position(row(41), A) == {"right of"}
    assert relative_position(row(40), A) == set()


def test_vertical_margin_edges():
    assert relative_position(A, col(40)) == set()
    assert relative_position(A, col(41)) == {"above"}
    assert relative_position(col(41), A) == {"below"}
    assert relative_position(col(40), A) == set()


def test_diagonal_margin_edges():
    # offset (-d, -d): each component (d - 20) / (d * sqrt 2) must exceed 0.5, d > 68.28
    diagonal = lambda d: [d, d, d + 100, d + 100]  # noqa: E731
    assert relative_position(A, diagonal(68)) == set()
    assert relative_position(A, diagonal(69)) == {"left of", "above"}
    assert relative_position(diagonal(69), A) == {"right of", "below"}
    # mostly horizontal: only the dominant axis
    assert relative_position([0, 0, 10, 10], [200, 50, 210, 60]) == {"left of"}


def test_threshold_and_degenerate():
    assert relative_position(A, row(1), threshold=0) == {"left of"}
    assert relative_position(A, row(41), threshold=0.2) == set()
    assert relative_position(A, A) == set()


def test_geometry_holds():
    assert geometry_holds("to the left of", A, row(41)) is True
    assert geometry_holds("right of", A, row(41)) is False
    assert geometry_holds("left of", A, row(40)) is False
    assert geometry_holds("behind", A, row(41)) is None
    assert geometry_holds("left of", None, row(41)) is None
    assert geometry_holds("left of", A, None) is None


def test_synonyms():
    for text, canonical in [
        ("left of", "left of"), ("to the left of", "left of"), ("On the left of", "left of"), ("left", "left of"),
        ("is to the left of the", "left of"), ("on the right side of", "right of"), ("right", "right of"),
        ("over", "above"), ("on top of", "above"), ("atop", "above"), ("Above", "above"),
        ("under", "below"), ("beneath", "below"), ("underneath", "below"), ("below", "below"),
        ("in front of", "in front of"), ("behind", "behind"), ("beside", "next to"), ("close to", "near"),
        ("inside", "inside"), ("in", "inside"), ("on", "on"), ("sitting on", "on"),
        ("to the north-east of", "to the north east of"),
    ]:
        assert canonical_relation(text) == canonical, text
    assert all(is_2d(r) for r in RELATIONS_2D) and not any(is_2d(r) for r in MODEL_RELATIONS)
    assert is_2d("on top of") and not is_2d("on") and not is_2d("next to")
    assert set(SYNONYMS.values()) == set(RELATIONS_2D) | set(MODEL_RELATIONS)


def test_same_label():
    assert same_label("Red Balls", "a red ball")
    assert same_label("boxes", "the box") and same_label("buses", "bus") and same_label("cherries", "cherry")
    assert same_label("glasses", "glass")
    assert not same_label("red ball", "blue ball") and not same_label("ball", "red ball")


# ------------------------------------------------------------------ parser

def answer(objects=None, relations=None, reasoning="ok", score=(20, 24), **extra) -> dict:
    if objects is None:
        objects = [{"label": "red ball", "bbox_2d": [100, 400, 300, 600]},
                   {"label": "blue box", "bbox_2d": [600, 400, 800, 600]}]
    if relations is None:
        relations = [{"subject": "red ball", "relation": "left of", "object": "blue box", "holds": True}]
    return {"objects": objects, "relations": relations, "reasoning": reasoning, "score": list(score), **extra}


def test_parse_clean():
    parsed = parse_t2i(json.dumps(answer()))
    assert parsed.objects == (T2IObject("red ball", (100, 400, 300, 600)), T2IObject("blue box", (600, 400, 800, 600)))
    assert parsed.relations == (T2IRelation("red ball", "left of", "blue box", True),)
    assert (parsed.spatial, parsed.presence, parsed.reasoning, parsed.notes) == (20.0, 24.0, "ok", ())
    data = parsed.to_dict()
    assert json.loads(json.dumps(data)) == data and data["objects"][0]["bbox_2d"] == [100, 400, 300, 600]


def test_parse_fences_and_thinking():
    draft = json.dumps(answer(score=(1, 1)))
    text = f"<think>first idea: {draft}</think>\nHere:\n```json\n{json.dumps(answer())}\n```"
    parsed = parse_t2i(text)
    assert (parsed.spatial, parsed.presence) == (20.0, 24.0)
    assert parsed.notes == ("answer after </think> used; 1 earlier JSON ignored",)


def test_parse_pixels_with_image_size():
    objects = [{"label": "red ball", "bbox_2d": [128, 72, 384, 360]},  # every coordinate <= 1000 ...
               {"label": "blue box", "bbox_2d": [800, 360, 1280, 720]}]  # ... but the answer is in pixels
    parsed = parse_t2i(json.dumps(answer(objects=objects)), image_size=(1280, 720))
    assert parsed.objects[0].bbox_2d == (100, 100, 300, 500)
    assert parsed.objects[1].bbox_2d == (625, 500, 1000, 1000)
    assert parsed.notes == ("bbox_2d read as pixels of a 1280x720 image: scaled to 0..1000",)


def test_parse_pixels_without_size_or_not_fitting():
    objects = [{"label": "blue box", "bbox_2d": [800, 360, 1280, 720]}]
    parsed = parse_t2i(json.dumps(answer(objects=objects)))
    assert parsed.objects == (T2IObject("blue box", None),)
    assert "far outside 0..1000: no box" in parsed.notes[0]
    parsed = parse_t2i(json.dumps(answer(objects=objects)), image_size=(1024, 1024))  # 1280 > 1024: not pixels
    assert parsed.objects == (T2IObject("blue box", None),) and len(parsed.notes) == 1
    parsed = parse_t2i(json.dumps(answer()), image_size=(1280, 720))  # all within 0..1000: never converted
    assert parsed.objects[0].bbox_2d == (100, 400, 300, 600) and parsed.notes == ()
    objects = [{"label": "blue box", "bbox_2d": [900, 100, 1040, 200]}]  # slightly out: clipped, not pixels
    parsed = parse_t2i(json.dumps(answer(objects=objects)), image_size=(1280, 720))
    assert parsed.objects == (T2IObject("blue box", (900, 100, 1000, 200)),)
    assert parsed.notes == ("objects[0].bbox_2d clipped to 0..1000",)


def test_parse_clip_reorder_null_and_strings():
    objects = [{"label": "red ball", "bbox_2d": [-10, 600, 300, 400]},
               {"label": "blue box", "bbox_2d": None},
               {"label": "green cone", "bbox_2d": ["10", "20", "30", "1040"]},
               {"bbox_2d": [1, 2, 3]},
               "junk"]
    parsed = parse_t2i(json.dumps(answer(objects=objects)))
    assert parsed.objects == (T2IObject("red ball", (0, 400, 300, 600)), T2IObject("blue box", None),
                              T2IObject("green cone", (10, 20, 30, 1000)), T2IObject("", None))
    assert parsed.notes == (
        "objects[2].bbox_2d given as strings", "objects[3].label missing: empty",
        "objects[3].bbox_2d is not four numbers: no box", "objects[4] dropped: not an object",
        "objects[0].bbox_2d clipped to 0..1000", "objects[0].bbox_2d corners reordered",
        "objects[2].bbox_2d clipped to 0..1000")


def test_parse_holds_never_invented():
    relations = [{"subject": "red ball", "relation": "left of", "object": "blue box"},
                 {"subject": "red ball", "relation": "above", "object": "blue box", "holds": "true"},
                 {"subject": "red ball", "relation": "below", "object": "blue box", "holds": 1},
                 {"subject": "red ball", "relation": "near", "object": "blue box", "holds": False},
                 {"relation": "near", "object": "blue box", "holds": True}]
    parsed = parse_t2i(json.dumps(answer(relations=relations)))
    assert [r.holds for r in parsed.relations] == [None, None, None, False]
    assert parsed.notes == ("relations[0].holds missing: unknown", "relations[1].holds is not a boolean: unknown",
                            "relations[2].holds is not a boolean: unknown",
                            "relations[4] dropped: subject missing or not a string")


def test_parse_scores():
    parsed = parse_t2i(json.dumps(answer(score=("20", "22.5"))))
    assert (parsed.spatial, parsed.presence) == (20.0, 22.5) and parsed.notes == ("score given as strings",)
    for bad in ([30, 10], [-1, 10], ["abc", 1], [1], [True, 3], [None, 3], "20, 20"):
        with pytest.raises(ParseError):
            parse_t2i(json.dumps(answer(score=bad)))
    without = answer()
    del without["score"]
    with pytest.raises(ParseError):
        parse_t2i(json.dumps(without))
    with pytest.raises(ParseError):
        parse_t2i("")
    with pytest.raises(ParseError):
        parse_t2i("<think>" + json.dumps(answer()))


def test_parse_missing_parts_and_pattern():
    parsed = parse_t2i('{"score": [10, 12]}')
    assert parsed.objects == () and parsed.relations == ()
    assert parsed.notes == ("objects missing: none", "relations missing: none", "reasoning missing: empty")
    truncated = json.dumps(answer())[:-1]  # never closed
    parsed = parse_t2i(truncated)
    assert (parsed.spatial, parsed.presence, parsed.reasoning) == (20.0, 24.0, "ok")
    assert parsed.objects == () and parsed.relations == ()
    assert "objects and relations dropped (no complete JSON)" in parsed.notes
    assert not any(n.startswith("edit_region") for n in parsed.notes)


# ------------------------------------------------------------------ verify

def make(objects, relations=(), spatial=20.0, presence=25.0) -> T2IAnswer:
    return T2IAnswer(tuple(T2IObject(*o) for o in objects), tuple(T2IRelation(*r) for r in relations), "",
                     spatial, presence)


LEFT, RIGHT = (100, 400, 300, 600), (600, 400, 800, 600)


def test_verify_model_relations():
    ans = make([("red ball", LEFT), ("Blue Box", RIGHT), ("green cone", None)],
               [("red ball", "to the left of", "blue box", True),
                ("red ball", "above", "blue box", True),  # the boxes say no
                ("red ball", "behind", "blue box", False),
                ("green cone", "left of", "red ball", None)])
    assert verify(ans) == [
        {"subject": "red ball", "relation": "to the left of", "object": "blue box", "canonical": "left of",
         "model": True, "geometry": True, "agree": True, "decided_by": "geometry"},
        {"subject": "red ball", "relation": "above", "object": "blue box", "canonical": "above",
         "model": True, "geometry": False, "agree": False, "decided_by": "geometry"},
        {"subject": "red ball", "relation": "behind", "object": "blue box", "canonical": "behind",
         "model": False, "geometry": None, "agree": None, "decided_by": "model"},
        {"subject": "green cone", "relation": "left of", "object": "red ball", "canonical": "left of",
         "model": None, "geometry": None, "agree": None, "decided_by": "none"},
    ]


def test_verify_explicit_relations_match_labels():
    ans = make([("red ball", LEFT), ("Blue Box", RIGHT)],
               [("blue box", "on the right of", "red ball", True),  # the inverse of the manifest's
                ("RED BALLS", "in front of", "the blue box", False)])
    verdicts = verify(ans, [["Red Balls", "left of", "the blue boxes"], ["red ball", "in front of", "blue box"],
                            ["red ball", "below", "blue box"], ["purple star", "above", "red ball"]])
    assert [(v["model"], v["geometry"], v["agree"], v["decided_by"]) for v in verdicts] == [
        (True, True, True, "geometry"), (False, None, None, "model"), (None, False, None, "geometry"),
        (None, None, None, "none")]
    assert verdicts[0]["subject"] == "Red Balls" and verdicts[0]["canonical"] == "left of"
    with pytest.raises(ValueError):
        verify(ans, [["red ball", "left of"]])


def test_verify_every_box_pair_like_geneval():
    ans = make([("ball", (0, 400, 100, 500)), ("ball", (700, 400, 800, 500)), ("box", (400, 400, 500, 500))])
    assert verify(ans, [["balls", "left of", "box"]])[0]["geometry"] is False  # one of the balls is right of it
    ans = make([("ball", (0, 400, 100, 500)), ("ball", (100, 0, 200, 100)), ("box", (400, 400, 500, 500))])
    assert verify(ans, [["balls", "left of", "box"]])[0]["geometry"] is True


def test_verify_in_pixels_differs_from_the_grid():
    # on the 0..1000 grid the offset is diagonal (left and above); in a 1000x500 image the
    # vertical half of it shrinks and only "left of" remains: GenEval judges in pixels
    ans = make([("a", (0, 0, 100, 100)), ("b", (69, 69, 169, 169))])
    assert verify(ans, [["a", "above", "b"]])[0]["geometry"] is True
    assert verify(ans, [["a", "above", "b"]], image_size=(1000, 500))[0]["geometry"] is False
    assert verify(ans, [["a", "left of", "b"]], image_size=(1000, 500))[0]["geometry"] is True


# ------------------------------------------------------------------ reward

def test_reward_by_hand():
    weights = T2IWeights(model=1, geometry=3, spatial_exponent=0.5)
    ans = make([], spatial=16, presence=25)  # M = sqrt(16/25) * 1 = 0.8
    verdicts = [{"canonical": "left of", "geometry": True}, {"canonical": "above", "geometry": True},
                {"canonical": "below", "geometry": False}, {"canonical": "behind", "geometry": None}]
    parts = t2i_reward_parts(ans, verdicts, weights)
    assert parts["model_part"] == pytest.approx(0.8)
    assert (parts["decidable"], parts["holding"]) == (3, 2)
    assert parts["reward"] == pytest.approx((0.8 + 3 * 2 / 3) / 4)  # 0.7
    assert t2i_reward(ans, verdicts, weights) == pytest.approx(0.7)


def test_reward_defaults_and_edges():
    full = make([], spatial=25, presence=25)
    assert t2i_reward(full, [{"canonical": "left of", "geometry": True},
                             {"canonical": "left of", "geometry": False}]) == pytest.approx(0.75)
    # nothing decidable: the model part alone, whatever the weights
    half = make([], spatial=25 * 0.5 ** (1 / 0.75), presence=25)
    nothing = [{"canonical": "behind", "geometry": None}, {"canonical": "left of", "geometry": None}]
    assert t2i_reward(half, nothing) == pytest.approx(0.5)
    assert t2i_reward(half, nothing, T2IWeights(model=0, geometry=1)) == pytest.approx(0.5)
    # a 2D relation without a box counts as failing only when asked
    parts = t2i_reward_parts(full, nothing, T2IWeights(missing_box_fails=True))
    assert (parts["decidable"], parts["verified_fraction"], parts["reward"]) == (1, 0.0, pytest.approx(0.5))
    # an absent object cannot be outweighed: presence 0 gives a model part of 0
    assert t2i_reward(make([], spatial=25, presence=0), []) == 0.0
    assert 0 <= t2i_reward(make([], spatial=0, presence=0), [{"canonical": "above", "geometry": True}]) <= 1


def test_reward_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError):
        t2i_reward(make([], spatial=None, presence=20), [])
    with pytest.raises(ValueError):
        t2i_reward(make([], spatial=26, presence=20), [])
    for bad in ({"model": -1}, {"model": 0, "geometry": 0}, {"spatial_exponent": 1.5}, {"geometry": float("nan")}):
        with pytest.raises(ConfigError):
            T2IWeights(**bad)


# ------------------------------------------------------------------ scenes

@pytest.fixture(scope="module")
def scene_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return folder, make_scene_set(folder, 5, seed=3)


def test_scenes_deterministic(scene_set, tmp_path):
    folder, rows = scene_set
    images, pairs = split_rows(rows)
    assert len(images) == 10 and len(pairs) == 5
    assert {p["perturbation"] for p in pairs} == {"swap", "mirror"}
    again = make_scene_set(tmp_path, 3, seed=3)  # scene i depends on (seed, i) alone: a prefix is the same
    assert split_rows(again) == (images[:6], pairs[:3])
    for row in images[:6]:
        assert (tmp_path / row["image"]).read_bytes() == (folder / row["image"]).read_bytes()
    assert [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()] == images
    assert [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()] == pairs
    other = make_scene_set(tmp_path / "other", 1, seed=4)
    assert other[0]["prompt"] != rows[0]["prompt"]


def test_scenes_twins_break_a_relation(scene_set):
    folder, rows = scene_set
    images, pairs = split_rows(rows)
    by_id = {r["id"]: r for r in images}
    for pair in pairs:
        original, twin = by_id[pair["id"]], by_id[pair["id"] + "-twin"]
        assert pair["chosen"] == original["image"] and pair["rejected"] == twin["image"]
        assert original["prompt"] == twin["prompt"] == pair["prompt"]
        assert 1 <= len(original["relations"]) <= 2 and twin["relations"] == original["relations"]
        for row in (original, twin):
            truth = [geometry_holds(rel, row["boxes"][s], row["boxes"][o]) for s, rel, o in row["relations"]]
            assert truth == row["holds"]
        assert all(original["holds"]) and not all(twin["holds"])
        assert twin["perturbation"] == pair["perturbation"] and original["perturbation"] is None
        if pair["perturbation"] == "mirror":  # the second relation's subject moved through its reference
            assert original["holds"][0] == twin["holds"][0] and twin["holds"][1] is False
        with Image.open(folder / original["image"]) as image:
            assert image.size == (WIDTH, HEIGHT) and image.mode == "RGB"
            rgb = np.asarray(image).astype(np.int32)
            colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
            assert len(colours) > 5000  # gradients, texture and noise, not flat fills


def test_ground_from_pixels_is_a_perfect_grounder(scene_set):
    folder, rows = scene_set
    images, _ = split_rows(rows)
    for row in images:
        with Image.open(folder / row["image"]) as image:
            text = ground_from_pixels(image, row["prompt"])
            size = image.size
        parsed = parse_t2i(text, image_size=size)
        assert parsed.notes == ()
        assert [o.label for o in parsed.objects] == list(row["boxes"])
        for obj in parsed.objects:
            assert max(abs(a - b) for a, b in zip(obj.bbox_2d, row["boxes"][obj.label])) <= 8, (row["id"], obj)
        verdicts = verify(parsed, row["relations"], image_size=size)
        assert [v["geometry"] for v in verdicts] == row["holds"]
        assert [v["model"] for v in verdicts] == row["holds"]
        assert parsed.presence == 25
        assert parsed.spatial == pytest.approx(25 * sum(row["holds"]) / len(row["holds"]), abs=0.01)


def test_ground_from_pixels_absent_object(scene_set):
    folder, rows = scene_set
    row = split_rows(rows)[0][0]
    named = set(" ".join(label.split()[:1]) for label in row["boxes"])
    colour = next(c for c in ("red", "orange", "yellow", "green", "blue", "purple") if c not in named)
    with Image.open(folder / row["image"]) as image:
        # an unnamed distractor may wear that colour: a blank image has no object at all
        blank = Image.new("RGB", image.size, (128, 128, 128))
        parsed = parse_t2i(ground_from_pixels(blank, f"a {colour} star above a {colour} ball"))
    assert parsed.objects == (T2IObject(f"{colour} star", None), T2IObject(f"{colour} ball", None))
    assert parsed.relations == (T2IRelation(f"{colour} star", "above", f"{colour} ball", False),)
    assert (parsed.spatial, parsed.presence) == (0, 0)
