"""Parsing of the model's SC and PQ answers (spatialreward.parse): what the
released scorer would score is read (and noted), nothing is ever invented."""

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
    assert answer.regions[0].clipped is False
    assert answer.notes == ()
    assert answer.regions[0].to_dict() == {"id": 1, "label": "cup", "bbox_2d": [100, 200, 300, 400]}


def test_valid_pq_answer():
    answer = parse_pq(pq_text())
    assert (answer.naturalness, answer.artifacts) == (22.0, 19.0)
    assert answer.reasoning == "Looks natural."
    assert answer.notes == ()


def test_score_bounds_inclusive():
    assert (parse_pq(pq_text(score=(0, 25))).naturalness, parse_pq(pq_text(score=(0, 25))).artifacts) == (0.0, 25.0)


def test_float_scores_kept():
    answer = parse_sc(sc_text(score=(12.5, 7.25)))
    assert answer.success == 12.5
    assert answer.overediting == 7.25
    assert answer.notes == ()
    pq = parse_pq(pq_text(score=(0.5, 24.75)))
    assert (pq.naturalness, pq.artifacts) == (0.5, 24.75)
    assert pq.notes == ()


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
    assert answer.notes == ("answer after </think> used; 1 earlier JSON ignored",)


def test_multiline_think_block_before_sc_json():
    text = "<think>\nline one\n{ not json }\nline three\n</think>\n\n" + sc_text(score=(5, 6))
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (5.0, 6.0)
    assert answer.notes == ()  # a think block without a draft answer is not worth a note


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


# --- tolerated defects: the scores are read as written, each liberty is noted ------------


def test_control_characters_inside_strings():
    """A literal newline or tab in the reasoning is not strict JSON, but the scores are readable."""
    text = '{"edit_region": [], "reasoning": "Line one.\nLine\ttwo.", "score": [20, 18]}'
    with pytest.raises(ValueError):
        json.loads(text)
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (20.0, 18.0)
    assert answer.reasoning == "Line one.\nLine\ttwo."
    assert answer.notes == ("control characters inside strings",)
    pq = parse_pq('{"reasoning": "ok\n", "score": [22, 19]}')
    assert (pq.naturalness, pq.artifacts, pq.reasoning) == (22.0, 19.0, "ok\n")
    assert pq.notes == ("control characters inside strings",)


def test_escaped_newline_is_not_a_control_character_note():
    answer = parse_pq(json.dumps(pq_obj(reasoning="a\nb")))
    assert answer.reasoning == "a\nb"
    assert answer.notes == ()


@pytest.mark.parametrize(
    "score, expected",
    [(["20", "18"], (20.0, 18.0)), (["20", 10], (20.0, 10.0)), ([10, " 22.5 "], (10.0, 22.5)), (["0", "25"], (0.0, 25.0))],
    ids=repr,
)
@pytest.mark.parametrize("parser", ["sc", "pq"])
def test_numeric_string_scores(parser, score, expected):
    obj = sc_obj() if parser == "sc" else pq_obj()
    obj["score"] = score
    answer = (parse_sc if parser == "sc" else parse_pq)(json.dumps(obj))
    got = (answer.success, answer.overediting) if parser == "sc" else (answer.naturalness, answer.artifacts)
    assert got == expected
    assert answer.notes == ("score given as strings",)


def test_float_scores_need_no_note():
    answer = parse_sc(sc_text(score=(22.5, 0.25)))
    assert (answer.success, answer.overediting) == (22.5, 0.25)
    assert answer.notes == ()


@pytest.mark.parametrize(
    "box, expected",
    [([1003, 200, 300, 400], (300, 200, 1000, 400)), ([-2, 0, 10, 1000.5], (0, 0, 10, 1000)), ([0, 0, 1050, 10], (0, 0, 1000, 10))],
    ids=repr,
)
def test_box_slightly_outside_is_clipped(box, expected):
    answer = parse_sc(sc_text(regions=[{"id": 0, "label": "cup", "bbox_2d": box}]))
    assert (answer.success, answer.overediting) == (20.0, 18.0)
    (region,) = answer.regions
    assert region.bbox_2d == expected
    assert region.clipped is True
    assert region.to_dict()["clipped"] is True
    notes = ["edit_region[0].bbox_2d clipped to 0..1000"]
    if box[0] > box[2]:
        notes.append("edit_region[0].bbox_2d corners reordered")
        assert region.reordered is True
    assert answer.notes == tuple(notes)


@pytest.mark.parametrize(
    "box, expected",
    [([300, 100, 200, 400], (200, 100, 300, 400)), ([100, 400, 300, 200], (100, 200, 300, 400)),
     ([300, 400, 100, 200], (100, 200, 300, 400))],
)
def test_inverted_box_is_reordered(box, expected):
    answer = parse_sc(sc_text(regions=[{"id": 1, "label": "cup", "bbox_2d": box}]))
    assert answer.regions[0].bbox_2d == expected
    assert answer.regions[0].reordered is True
    assert answer.regions[0].clipped is False
    assert answer.notes == ("edit_region[0].bbox_2d corners reordered",)
    assert (answer.success, answer.overediting) == (20.0, 18.0)


def test_reorder_flags_only_the_inverted_region():
    regions = [
        {"id": 1, "label": "cup", "bbox_2d": [300, 400, 100, 200]},
        {"id": 2, "label": "saucer", "bbox_2d": [10, 20, 30, 40]},
    ]
    first, second = parse_sc(sc_text(regions=regions)).regions
    assert first.bbox_2d == (100, 200, 300, 400)
    assert first.to_dict()["reordered"] is True
    assert "clipped" not in first.to_dict()
    assert second.bbox_2d == (10, 20, 30, 40)
    assert second.reordered is False
    assert "reordered" not in second.to_dict() and "clipped" not in second.to_dict()


def test_reorder_only_swaps_the_inverted_axis():
    answer = parse_sc(sc_text(regions=[{"id": 1, "label": "a", "bbox_2d": [100, 400, 300, 200]}]))
    assert answer.regions[0].bbox_2d == (100, 200, 300, 400)
    assert answer.regions[0].reordered


@pytest.mark.parametrize(
    "region, kept, note",
    [
        ({"id": "1", "label": "cup", "bbox_2d": [0, 0, 10, 10]}, Region(1, "cup", (0, 0, 10, 10)),
         "edit_region[0].id given as a string"),
        ({"id": 1.0, "label": "cup", "bbox_2d": [0, 0, 10, 10]}, Region(1, "cup", (0, 0, 10, 10)),
         "edit_region[0].id given as a float"),
        ({"id": 1, "bbox_2d": [0, 0, 10, 10]}, Region(1, "", (0, 0, 10, 10)), "edit_region[0].label missing: empty"),
        ({"id": 1, "label": 7, "bbox_2d": [0, 0, 10, 10]}, Region(1, "", (0, 0, 10, 10)),
         "edit_region[0].label is not a string: empty"),
        ({"id": 1, "label": "cup", "bbox_2d": ["0", "0", "10", "10"]}, Region(1, "cup", (0, 0, 10, 10)),
         "edit_region[0].bbox_2d given as strings"),
    ],
    ids=repr,
)
def test_defective_region_kept_with_a_note(region, kept, note):
    answer = parse_sc(sc_text(regions=[region]))
    assert answer.regions == (kept,)
    assert answer.notes == (note,)
    assert (answer.success, answer.overediting) == (20.0, 18.0)


@pytest.mark.parametrize(
    "region, why",
    [
        ({"id": 1, "label": "cup", "bbox_2d": [1, 2, 3]}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, 4, 5]}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, "x"]}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, True]}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup", "bbox_2d": [1, 2, 3, None]}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup"}, "bbox_2d is not four numbers"),
        ({"id": 1, "label": "cup", "bbox_2d": [0, 0, 1051, 10]}, "bbox_2d [0, 0, 1051, 10] is far outside 0..1000"),
        ({"id": 1, "label": "a", "bbox_2d": [1200, 0, 100, 10]}, "bbox_2d [1200, 0, 100, 10] is far outside 0..1000"),
        ({"id": 1, "label": "cup", "bbox_2d": [-51, 0, 10, 10]}, "bbox_2d [-51, 0, 10, 10] is far outside 0..1000"),
        ({"id": "one", "label": "cup", "bbox_2d": [0, 0, 10, 10]}, "id is not an integer"),
        ({"id": True, "label": "cup", "bbox_2d": [0, 0, 10, 10]}, "id is not an integer"),
        ({"id": 1.5, "label": "cup", "bbox_2d": [0, 0, 10, 10]}, "id is not an integer"),
        ({"label": "cup", "bbox_2d": [0, 0, 10, 10]}, "id missing"),
        ([0, 0, 10, 10], "not an object"),
    ],
    ids=repr,
)
def test_unreadable_region_dropped_and_counted(region, why):
    answer = parse_sc(sc_text(regions=[region]))
    assert answer.regions == ()
    assert answer.notes == (f"edit_region[0] dropped: {why}",)
    assert (answer.success, answer.overediting) == (20.0, 18.0)


def test_dropped_region_named_by_index_others_kept():
    regions = [
        {"id": 0, "label": "cup", "bbox_2d": [0, 0, 10, 10]},
        {"id": 1, "label": "saucer", "bbox_2d": [0, 0, 10]},
        {"id": 2, "label": "spoon", "bbox_2d": [1001, 5, 20, 30]},
    ]
    answer = parse_sc(sc_text(regions=regions))
    assert [r.id for r in answer.regions] == [0, 2]
    assert answer.regions[1].bbox_2d == (20, 5, 1000, 30)
    assert answer.notes == (
        "edit_region[1] dropped: bbox_2d is not four numbers",
        "edit_region[2].bbox_2d clipped to 0..1000",
        "edit_region[2].bbox_2d corners reordered",
    )


def test_missing_edit_region():
    obj = sc_obj()
    del obj["edit_region"]
    answer = parse_sc(json.dumps(obj))
    assert answer.regions == ()
    assert answer.notes == ("edit_region missing: no regions",)
    assert (answer.success, answer.overediting) == (20.0, 18.0)


@pytest.mark.parametrize("regions", [{"id": 1}, "cup", None, 3])
def test_edit_region_not_a_list(regions):
    obj = sc_obj()
    obj["edit_region"] = regions
    answer = parse_sc(json.dumps(obj))
    assert answer.regions == ()
    assert answer.notes == ("edit_region is not a list: no regions",)
    assert answer.success == 20.0


def test_missing_reasoning():
    obj = pq_obj()
    del obj["reasoning"]
    answer = parse_pq(json.dumps(obj))
    assert (answer.naturalness, answer.artifacts, answer.reasoning) == (22.0, 19.0, "")
    assert answer.notes == ("reasoning missing: empty",)


def test_reasoning_not_a_string():
    answer = parse_sc(json.dumps({**sc_obj(), "reasoning": ["a", "b"]}))
    assert (answer.success, answer.overediting, answer.reasoning) == (20.0, 18.0, "")
    assert answer.notes == ("reasoning is not a string: ignored",)


def test_draft_in_think_loses_to_the_answer_after_it():
    """The draft used to win; the answer after </think> is the one the model gives."""
    draft = sc_text(score=(3, 4))
    text = f"<think>First try: {draft}\nNo, look again.</think>\n" + sc_text(score=(21, 17))
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (21.0, 17.0)
    assert answer.notes == ("answer after </think> used; 1 earlier JSON ignored",)


def test_last_think_block_counts_drafts_in_all_earlier_text():
    text = ("<think>" + pq_text(score=(1, 2)) + "</think>" + pq_text(score=(3, 4))
            + "<think>" + pq_text(score=(5, 6)) + "</think>\n" + pq_text(score=(7, 8)))
    answer = parse_pq(text)
    assert (answer.naturalness, answer.artifacts) == (7.0, 8.0)
    assert answer.notes == ("answer after </think> used; 3 earlier JSON ignored",)


def test_answer_after_a_closing_think_without_opening_tag():
    """Templates that open <think> in the prompt leave only </think> in the answer."""
    answer = parse_pq("thinking about it " + pq_text(score=(1, 1)) + "</think>" + pq_text(score=(12, 13)))
    assert (answer.naturalness, answer.artifacts) == (12.0, 13.0)
    assert answer.notes == ("answer after </think> used; 1 earlier JSON ignored",)


def test_last_of_several_answers_used():
    answer = parse_pq(pq_text(score=(1, 2)) + "\nCorrected:\n" + pq_text(score=(10, 11)))
    assert (answer.naturalness, answer.artifacts) == (10.0, 11.0)
    assert answer.notes == ("last of 2 JSON answers used",)


def test_answer_before_an_unterminated_think():
    answer = parse_pq(pq_text(score=(9, 10)) + "\n<think>and then " + pq_text(score=(1, 1)))
    assert (answer.naturalness, answer.artifacts) == (9.0, 10.0)
    assert answer.notes == ("text after an unterminated <think> ignored",)


def test_scores_read_by_pattern_when_no_complete_json():
    """An unescaped quote in the reasoning breaks the JSON, not the score list."""
    text = ('{"edit_region": [{"id": 0, "label": "cup", "bbox_2d": [1, 2, 3, 4]}, '
            '{"id": 1, "label": "mug", "bbox_2d": [5, 6, 7, 8]}], '
            '"reasoning": "The "cup" is red now.", "score": [20, 18]}')
    answer = parse_sc(text)
    assert (answer.success, answer.overediting) == (20.0, 18.0)
    assert answer.regions == ()
    assert answer.reasoning == 'The "cup" is red now.'
    assert answer.notes == (
        "scores read by pattern: no complete JSON answer",
        "edit_region: 2 regions dropped (no complete JSON)",
        "reasoning read by pattern",
    )


def test_scores_read_by_pattern_from_an_unclosed_object():
    answer = parse_pq('Answer: {"reasoning": "Sharp and\\nclean.", "score": ["23", 24]')
    assert (answer.naturalness, answer.artifacts) == (23.0, 24.0)
    assert answer.reasoning == "Sharp and\nclean."
    assert answer.notes == ("scores read by pattern: no complete JSON answer", "reasoning read by pattern")


def test_scores_read_by_pattern_without_reasoning():
    answer = parse_pq('"score": [5, 6.5] and nothing else')
    assert (answer.naturalness, answer.artifacts, answer.reasoning) == (5.0, 6.5, "")
    assert answer.notes == ("scores read by pattern: no complete JSON answer", "reasoning not readable: empty")


@pytest.mark.parametrize("text", ['{"reasoning": "r", "score": [26, 3', '{"reasoning": "r", "score": [-1, 3',
                                  '{"reasoning": "r", "score": [3]', '{"reasoning": "r", "score": [NaN, 3'])
def test_pattern_never_reads_a_bad_score(text):
    with pytest.raises(ParseError):
        parse_pq(text)


# --- rejected answers: no readable score list -------------------------------------------


@pytest.mark.parametrize(
    "score",
    [
        [26, 10],
        [10, 25.5],
        [-1, 10],
        [10, -0.5],
        ["abc", 10],
        [10, "20x"],
        ["-1", 10],
        ["26", 10],
        ["NaN", 10],
        [True, 10],
        [10, False],
        [None, 10],
        [[20], 10],
        [10],
        [10, 10, 10],
        [],
        "20",
        20,
        None,
        {"a": 1},
    ],
    ids=repr,
)
@pytest.mark.parametrize("parser", ["sc", "pq"])
def test_bad_scores_rejected(parser, score):
    obj = sc_obj() if parser == "sc" else pq_obj()
    obj["score"] = score
    with pytest.raises(ParseError, match="score"):
        (parse_sc if parser == "sc" else parse_pq)(json.dumps(obj))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("parser", ["sc", "pq"])
def test_nan_and_infinity_rejected(parser, constant):
    text = (sc_text() if parser == "sc" else pq_text()).replace("[20, 18]", f"[{constant}, 18]")
    text = text.replace("[22, 19]", f"[22, {constant}]")
    assert constant in text
    with pytest.raises(ParseError, match="not a number"):
        (parse_sc if parser == "sc" else parse_pq)(text)


def test_huge_number_overflowing_to_infinity_rejected():
    with pytest.raises(ParseError):
        parse_pq('{"reasoning": "r", "score": [1e400, 10]}')


def test_missing_score_key():
    obj = pq_obj()
    del obj["score"]
    with pytest.raises(ParseError, match="score"):
        parse_pq(json.dumps(obj))


def test_nan_box_drops_only_the_region():
    text = sc_text().replace("[100, 200, 300, 400]", "[NaN, 200, 300, 400]")
    answer = parse_sc(text)
    assert answer.regions == ()
    assert answer.notes == ("edit_region[0] dropped: bbox_2d is not four numbers",)


def test_degenerate_box_allowed():
    answer = parse_sc(sc_text(regions=[{"id": 1, "label": "a", "bbox_2d": [5, 5, 5, 5]}]))
    assert answer.regions[0].bbox_2d == (5, 5, 5, 5)
    assert answer.notes == ()


@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_empty_answer(text):
    with pytest.raises(ParseError, match="empty"):
        parse_pq(text)


def test_unterminated_think():
    with pytest.raises(ParseError, match="think"):
        parse_pq("<think>I am still thinking " + pq_text())


def test_score_only_inside_an_unterminated_think_by_pattern():
    with pytest.raises(ParseError, match="unterminated <think>"):
        parse_sc('<think>maybe "score": [20, 18] ... ')


def test_no_json_at_all():
    with pytest.raises(ParseError, match="no JSON"):
        parse_pq("The edit looks great, 20 out of 25.")


def test_truncated_json():
    with pytest.raises(ParseError):
        parse_sc(sc_text()[:-5])


def test_json_inside_think_only_is_not_an_answer():
    with pytest.raises(ParseError, match="after </think>"):
        parse_pq("<think>" + pq_text() + "</think> I cannot decide.")


def test_parse_error_stage():
    with pytest.raises(ParseError) as info:
        parse_pq("nothing")
    assert info.value.to_dict()["stage"] == "parse"
