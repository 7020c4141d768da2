"""Strict parsing of the model's SC and PQ answers (spatialreward.parse)."""

from __future__ import annotations

import json

import pytest

from spatialreward.errors import ParseError
from spatialreward.parse import Region, extract_json, parse_pq, parse_sc


def sc_obj(score=(20, 18), regions=None, reasoning="The cup turned red."):
    if regions is None:
        regions = [{"id": 1, "label": "cup", "bbox_2d": [100, 200, 300, 400]}]
    return {"edit_region": regions, "reasoning": reasoning, "score": list(score)}


def pq_obj(score=(22, 19), reasoning="Looks natural."):
    return {"reasoning": reasoning, "score": list(score)}


def sc_text(**kwargs) -> str:
    return json.dumps(sc_obj(**kwargs))


def pq_text(**kwargs) -> str:
    return json.dumps(pq_obj(**kwargs))


# --- valid answers ----------------------------------------------------------------


def test_valid_sc_answer():
    answer = parse_sc(sc_text())
    assert answer.success == 20.0
    assert answer.overediting == 18.0
    assert answer.reasoning == "The cup turned red."
    assert answer.regions == (Region(id=1, label="cup", bbox_2d=(100, 200, 300, 400)),)
    assert answer.regions[0].reordered is False
    assert answer.regions[0].to_dict() == {"id": 1, "label": "cup", "bbox_2d": [100, 200, 300, 400]}


def test_valid_pq_answer():
    answer = parse_pq(pq_text())
    assert (answer.naturalness, answer.artifacts) == (22.0, 19.0)
    assert answer.reasoning == "Looks natural."


def test_score_bounds_inclusive():
    assert (parse_pq(pq_text(score=(0, 25))).naturalness, parse_pq(pq_text(score=(0, 25))).artifacts) == (0.0, 25.0)


def test_float_scores_kept():
    answer = parse_sc(sc_text(score=(12.5, 7.25)))
    assert answer.success == 12.5
    assert answer.overediting == 7.25
    pq = parse_pq(pq_text(score=(0.5, 24.75)))
    assert (pq.naturalness, pq.artifacts) == (0.5, 24.75)


def test_empty_edit_region_allowed():
    answer = parse_sc(sc_text(regions=[]))
    assert answer.regions == ()
    assert answer.success == 20.0


def test_several_regions():
    regions = [
        {"id": 1, "label": "cup", "bbox_2d": [0, 0, 10, 10]},
        {"id": 2, "label": "saucer", "bbox_2d": [500, 500, 1000, 1000]},
    ]
    answer = parse_sc(sc_text(regions=regions))
    assert [r.label for r in answer.regions] == ["cup", "saucer"]
    assert answer.regions[1].bbox_2d == (500, 500, 1000, 1000)


# --- tolerated wrapping -------------------------------------------------------------


def test_think_block_before_json():
    text = "<think>Let me look. Maybe {\"score\": [1, 1]} ... no.</think>\n" + pq_text(score=(21, 23))
    answer = parse_pq(text)
    assert (answer.naturalness, answer.artifacts) == (21.0, 23.0)


def test_multiline_think_block_before_sc_json():
    text = "<think>\nline one\n{ not json }\nline three\n</think>\n\n" + sc_text(score=(5, 6))
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (5.0, 6.0)


def test_json_code_fence():
    text = "```json\n" + json.dumps(sc_obj(score=(11, 12)), indent=2) + "\n```"
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (11.0, 12.0)


def test_text_around_json():
    text = "Here is my judgment: " + pq_text(score=(3, 4)) + " Hope this helps!"
    answer = parse_pq(text)
    assert (answer.naturalness, answer.artifacts) == (3.0, 4.0)


def test_double_brace_wrapping_resolves_to_inner_object():
    text = "{" + sc_text(score=(9, 8)) + "}"
    assert text.startswith("{{") and text.endswith("}}")
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (9.0, 8.0)
    assert answer.regions[0].label == "cup"


def test_double_brace_pq():
    answer = parse_pq("{{" + pq_text(score=(10, 15))[1:-1] + "}}")
    assert (answer.naturalness, answer.artifacts) == (10.0, 15.0)


def test_extract_json_picks_object_with_score():
    text = 'prefix {"note": "x"} then ' + pq_text(score=(1, 2))
    assert extract_json(text)["score"] == [1, 2]


# --- rejected answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "score",
    [
        [26, 10],
        [10, 25.5],
        [-1, 10],
        [10, -0.5],
        ["20", 10],
        [10, "20"],
        [True, 10],
        [10, False],
        [None, 10],
        [10],
        [10, 10, 10],
        [],
        "20",
        20,
        {"a": 1},
    ],
    ids=repr,
)
@pytest.mark.parametrize("parser", ["sc", "pq"])
def test_bad_scores_rejected(parser, score):
    obj = sc_obj() if parser == "sc" else pq_obj()
    obj["score"] = score
    with pytest.raises(ParseError):
        (parse_sc if parser == "sc" else parse_pq)(json.dumps(obj))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("parser", ["sc", "pq"])
def test_nan_and_infinity_rejected(parser, constant):
    text = (sc_text() if parser == "sc" else pq_text()).replace("[20, 18]", f"[{constant}, 18]")
    text = text.replace("[22, 19]", f"[22, {constant}]")
    assert constant in text
    with pytest.raises(ParseError):
        (parse_sc if parser == "sc" else parse_pq)(text)


def test_huge_number_overflowing_to_infinity_rejected():
    with pytest.raises(ParseError):
        parse_pq('{"reasoning": "r", "score": [1e400, 10]}')


def test_missing_score_key():
    obj = pq_obj()
    del obj["score"]
    with pytest.raises(ParseError, match="score"):
        parse_pq(json.dumps(obj))


def test_missing_reasoning():
    obj = pq_obj()
    del obj["reasoning"]
    with pytest.raises(ParseError, match="reasoning"):
        parse_pq(json.dumps(obj))


def test_reasoning_not_a_string():
    with pytest.raises(ParseError, match="reasoning"):
        parse_sc(json.dumps({**sc_obj(), "reasoning": ["a", "b"]}))


def test_missing_edit_region():
    obj = sc_obj()
    del obj["edit_region"]
    with pytest.raises(ParseError, match="edit_region"):
        parse_sc(json.dumps(obj))


@pytest.mark.parametrize("regions", [{"id": 1}, "cup", None, 3])
def test_edit_region_not_a_list(regions):
    obj = sc_obj()
    obj["edit_region"] = regions
    with pytest.raises(ParseError, match="edit_region"):
        parse_sc(json.dumps(obj))


@pytest.mark.parametrize(
    "region",
    [
        {"id": 1, "label": "cup", "bbox_2d": [1, 2, 3]},  # three numbers
        {"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, 4, 5]},
        {"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, "4"]},
        {"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, True]},
        {"id": 1, "label": "cup", "bbox_2d": [0, 0, 1001, 10]},  # outside 0..1000
        {"id": 1, "label": "cup", "bbox_2d": [-1, 0, 10, 10]},
        {"id": 1, "label": "cup", "bbox_2d": [0, 0, 10, 1000.5]},
        {"id": 1, "label": "cup"},  # no box
        {"id": "1", "label": "cup", "bbox_2d": [0, 0, 10, 10]},  # id not int
        {"id": True, "label": "cup", "bbox_2d": [0, 0, 10, 10]},
        {"id": 1.5, "label": "cup", "bbox_2d": [0, 0, 10, 10]},
        {"id": 1, "label": 7, "bbox_2d": [0, 0, 10, 10]},  # label not str
        {"label": "cup", "bbox_2d": [0, 0, 10, 10]},  # no id
        [0, 0, 10, 10],  # not an object
    ],
    ids=repr,
)
def test_bad_region_rejected(region):
    with pytest.raises(ParseError, match=r"edit_region\[0\]"):
        parse_sc(sc_text(regions=[region]))


def test_bad_second_region_named_by_index():
    regions = [
        {"id": 1, "label": "cup", "bbox_2d": [0, 0, 10, 10]},
        {"id": 2, "label": "saucer", "bbox_2d": [0, 0, 10]},
    ]
    with pytest.raises(ParseError, match=r"edit_region\[1\]"):
        parse_sc(sc_text(regions=regions))


@pytest.mark.parametrize("box", [[300, 100, 200, 400], [100, 400, 300, 200], [300, 400, 100, 200]])
def test_inverted_box_rejected_by_default(box):
    with pytest.raises(ParseError, match="x1 > x2"):
        parse_sc(sc_text(regions=[{"id": 1, "label": "cup", "bbox_2d": box}]))


def test_inverted_box_reordered_when_asked():
    regions = [
        {"id": 1, "label": "cup", "bbox_2d": [300, 400, 100, 200]},
        {"id": 2, "label": "saucer", "bbox_2d": [10, 20, 30, 40]},
    ]
    answer = parse_sc(sc_text(regions=regions), reorder_boxes=True)
    first, second = answer.regions
    assert first.bbox_2d == (100, 200, 300, 400)
    assert first.reordered is True
    assert first.to_dict()["reordered"] is True
    assert second.bbox_2d == (10, 20, 30, 40)
    assert second.reordered is False
    assert "reordered" not in second.to_dict()


def test_reorder_only_swaps_the_inverted_axis():
    answer = parse_sc(sc_text(regions=[{"id": 1, "label": "a", "bbox_2d": [100, 400, 300, 200]}]), reorder_boxes=True)
    assert answer.regions[0].bbox_2d == (100, 200, 300, 400)
    assert answer.regions[0].reordered


def test_reorder_still_rejects_out_of_range():
    with pytest.raises(ParseError):
        parse_sc(sc_text(regions=[{"id": 1, "label": "a", "bbox_2d": [1200, 0, 100, 10]}]), reorder_boxes=True)


def test_degenerate_box_allowed():
    answer = parse_sc(sc_text(regions=[{"id": 1, "label": "a", "bbox_2d": [5, 5, 5, 5]}]))
    assert answer.regions[0].bbox_2d == (5, 5, 5, 5)


@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_empty_answer(text):
    with pytest.raises(ParseError, match="empty"):
        parse_pq(text)


def test_unterminated_think():
    with pytest.raises(ParseError, match="think"):
        parse_pq("<think>I am still thinking " + pq_text())


def test_no_json_at_all():
    with pytest.raises(ParseError, match="no JSON"):
        parse_pq("The edit looks great, 20 out of 25.")


def test_truncated_json():
    with pytest.raises(ParseError):
        parse_sc(sc_text()[:-5])


def test_json_inside_think_only_is_not_an_answer():
    with pytest.raises(ParseError):
        parse_pq("<think>" + pq_text() + "</think> I cannot decide.")


def test_parse_error_stage():
    with pytest.raises(ParseError) as info:
        parse_pq("nothing")
    assert info.value.to_dict()["stage"] == "parse"
