"""Reading results files (spatialreward.results): validation naming file:line,
one record's validation, and the walk over units (single records and groups)."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from spatialreward.errors import ScoresFileError
from spatialreward.results import Unit, read_records, record_problem, walk_units

SCORES = {"success": 20, "overediting": 15, "naturalness": 22, "artifacts": 18}


def ok(rid, reward=0.5, group=None, size=None, **extra):
    record = {"id": rid, "status": "ok", "error": None, "reward": reward, "overall": 5.0, "sc": 5.0, "pq": 5.0,
              "scores": dict(SCORES)}
    if group is not None:
        record.update(group=group, group_size=size, candidate=int(rid.rsplit("#", 1)[1]), rank=None)
    record.update(extra)
    return record


def err(rid, group=None, size=None):
    record = {"id": rid, "status": "error", "error": {"stage": "parse", "message": "bad"}, "reward": None}
    if group is not None:
        record.update(group=group, group_size=size, candidate=int(rid.rsplit("#", 1)[1]), rank=None)
    return record


def shape(units) -> list[tuple[list[str], bool]]:
    return [([r["id"] for r in unit], unit.complete) for unit in units]


# --- walk_units ------------------------------------------------------------------------------


def test_single_records_are_one_unit_each():
    units = list(walk_units([ok("a"), err("b"), ok("c")]))
    assert shape(units) == [(["a"], True), (["b"], True), (["c"], True)]
    assert all(u.group is None and u.group_size is None and len(u) == 1 for u in units)


def test_groups_are_one_unit_between_single_records():
    records = [ok("a"), ok("g#0", group="g", size=3), err("g#1", group="g", size=3), ok("g#2", group="g", size=3),
               ok("h#0", group="h", size=2), ok("h#1", group="h", size=2), ok("b")]
    units = list(walk_units(records))
    assert shape(units) == [(["a"], True), (["g#0", "g#1", "g#2"], True), (["h#0", "h#1"], True), (["b"], True)]
    assert (units[1].group, units[1].group_size) == ("g", 3)
    assert [r["id"] for unit in units for r in unit] == [r["id"] for r in records]  # nothing lost or reordered


def test_incomplete_trailing_group():
    units = list(walk_units([ok("a"), ok("g#0", group="g", size=3), ok("g#1", group="g", size=3)]))
    assert shape(units) == [(["a"], True), (["g#0", "g#1"], False)]


def test_group_interrupted_by_another_group():
    records = [ok("g#0", group="g", size=2), ok("h#0", group="h", size=2), ok("h#1", group="h", size=2),
               ok("g#1", group="g", size=2)]
    assert shape(walk_units(records)) == [(["g#0"], False), (["h#0", "h#1"], True), (["g#1"], False)]


def test_group_interrupted_by_a_single_record():
    records = [ok("g#0", group="g", size=2), ok("a"), ok("g#1", group="g", size=2)]
    assert shape(walk_units(records)) == [(["g#0"], False), (["a"], True), (["g#1"], False)]


def test_a_group_is_yielded_as_soon_as_it_is_whole():
    def records():
        yield ok("g#0", group="g", size=2)
        yield ok("g#1", group="g", size=2)
        raise AssertionError("read past the complete group")

    units = walk_units(records())
    assert shape([next(units)]) == [(["g#0", "g#1"], True)]


def test_a_single_record_is_yielded_without_reading_further():
    def records():
        yield ok("a")
        raise AssertionError("read past the single record")

    assert [r["id"] for r in next(walk_units(records()))] == ["a"]


def test_group_without_a_usable_group_size_ends_at_the_next_unit():
    records = [ok("g#0", group="g", size=None), ok("g#1", group="g", size="2"), ok("a")]
    units = list(walk_units(records))
    assert shape(units) == [(["g#0", "g#1"], True), (["a"], True)]  # no stated size: cannot be known incomplete
    assert units[0].group_size is None


def test_walk_with_a_key():
    items = [(0, ok("a")), (10, ok("g#0", group="g", size=2)), (20, ok("g#1", group="g", size=2))]
    units = list(walk_units(items, key=lambda item: item[1]))
    assert [[offset for offset, _ in unit] for unit in units] == [[0], [10, 20]]
    assert isinstance(units[1], Unit) and units[1].complete


def test_walk_of_nothing():
    assert list(walk_units([])) == []


# --- record_problem ------------------------------------------------------------------------------


@pytest.mark.parametrize("record, problem", [
    (ok("a"), None),
    (err("a"), None),
    ([1], "not a JSON object"),
    ({"status": "ok"}, "no 'id'"),
    ({**ok("a"), "id": 7}, "no 'id'"),
    ({**ok("a"), "status": "done"}, "status must be 'ok' or 'error', not 'done'"),
    ({**ok("a"), "reward": 1.5}, "ok record without a reward in [0, 1]"),
    ({**ok("a"), "reward": True}, "ok record without a reward in [0, 1]"),
    ({**ok("a"), "overall": None}, "ok record without a numeric 'overall'"),
    ({**ok("a"), "pq": "5"}, "ok record without a numeric 'pq'"),
    ({**ok("a"), "scores": {**SCORES, "artifacts": None}}, "ok record without its four raw scores"),
    ({**ok("a"), "scores": {**SCORES, "success": float("inf")}}, "ok record without its four raw scores"),
    ({**err("a"), "error": "bad"}, "error record without an 'error' object"),
], ids=repr)
def test_record_problem(record, problem):
    assert record_problem(record) == problem


# --- read_records --------------------------------------------------------------------------------


def test_read_records_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [ok("a"), "", "   ", err("b")])
    assert [r["id"] for r in read_records(path)] == ["a", "b"]


@pytest.mark.parametrize("line, message", [
    ("not json", "invalid JSON"),
    ('{"id": "x", "status": "ok", "reward": NaN}', "invalid JSON (NaN is not a valid number)"),
    ('{"id": "x", "status": "ok", "reward": 1e999}', "not a valid spatialreward record (ok record without a reward"),
    ('{"id": "x", "status": "ok"}', "not a valid spatialreward record (ok record without a reward in [0, 1])"),
    (json.dumps({**ok("x"), "sc": None}), "not a valid spatialreward record (ok record without a numeric 'sc')"),
])
def test_read_records_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "s.jsonl", [ok("a"), "", line, ok("c")])
    with pytest.raises(ScoresFileError) as info:
        list(read_records(path))
    assert str(info.value).startswith(f"{path}:3: ")  # the file's line, blank lines counted
    assert message in str(info.value)


def test_read_records_streams_up_to_the_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [ok("a"), "garbage"])
    records = read_records(path)
    assert next(records)["id"] == "a"
    with pytest.raises(ScoresFileError, match=":2: invalid JSON"):
        next(records)


def test_read_records_not_utf8(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(json.dumps(ok("a")).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(ScoresFileError, match=":2: invalid JSON"):
        list(read_records(path))


def test_read_records_missing_file(tmp_path):
    with pytest.raises(ScoresFileError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


def test_scores_file_error_is_a_value_error():
    assert issubclass(ScoresFileError, ValueError)
