"""The JSONL results file: appending, resume, repair (spatialreward.output)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import read_jsonl, write_jsonl
from spatialreward.errors import OutputConflictError
from spatialreward.output import RecordWriter, prepare, summary_path
from spatialreward.results import id_key
from spatialreward.results import read_records

HASH = "cfg0000000000001"
OTHER = "cfg0000000000002"


def rec(rid, status="ok", group=None, group_size=None, config_hash=HASH, **extra):
    record = {"id": rid, "status": status, "reward": 0.5 if status == "ok" else None, "config_hash": config_hash}
    if status != "ok":
        record["error"] = {"stage": "parse", "message": "bad"}
    else:
        record.update(overall=5.0, sc=5.0, pq=5.0)
        record["scores"] = {"success": 20, "overediting": 20, "naturalness": 20, "artifacts": 20}
    if group is not None:
        record.update(group=group, group_size=group_size, candidate=int(rid.rsplit("#", 1)[-1]), rank=None)
    record.update(extra)
    return record


def ids_of(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


def keys(*ids):
    return {id_key(i) for i in ids}


# --- prepare -------------------------------------------------------------------


def test_prepare_new_path_creates_empty_file(tmp_path):
    path = tmp_path / "deep" / "dir" / "scores.jsonl"
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert path.is_file()
    assert path.read_bytes() == b""
    assert state.done == set()
    assert state.kept == 0
    assert state.repaired_tail is False
    assert state.dropped == 0


def test_resume_done_ids_equal_ids_written(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), rec("b", status="error"), rec("g#0", group="g", group_size=2),
                                              rec("g#1", group="g", group_size=2), rec("c")])
    before = path.read_bytes()
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.done == keys("a", "b", "g#0", "g#1", "c")
    assert id_key("zzz") not in state.done
    assert state.kept == 5
    assert state.repaired_tail is False
    assert path.read_bytes() == before


def test_resume_empty_existing_file(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"")
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.done == set() and state.kept == 0 and not state.repaired_tail


def test_torn_last_line_without_newline_is_cut(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), rec("b")])
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(json.dumps(rec("c")).encode())  # complete JSON, but no newline
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is True
    assert path.read_bytes() == good
    assert state.done == keys("a", "b")
    assert state.kept == 2


def test_torn_half_json_line_is_cut(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a")])
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(json.dumps(rec("b")).encode()[:15])
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is True
    assert path.read_bytes() == good
    assert state.done == keys("a")


def test_half_json_with_newline_at_end_is_cut(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), json.dumps(rec("b"))[:20]])
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is True
    assert ids_of(path) == ["a"]


def test_after_repair_appending_gives_valid_file(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a")])
    with path.open("ab") as handle:
        handle.write(b'{"id": "b", "sta')
    prepare(path, HASH, overwrite=False, retry_errors=False)
    writer = RecordWriter(path)
    writer.write([rec("b")])
    writer.close()
    assert ids_of(path) == ["a", "b"]


def test_trailing_incomplete_group_is_cut(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a")])
    good = path.read_bytes()
    write_jsonl_append(path, [rec("g#0", group="g", group_size=3), rec("g#1", group="g", group_size=3)])
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is True
    assert path.read_bytes() == good
    assert state.done == keys("a")
    assert state.kept == 1


def test_incomplete_group_and_torn_line_are_both_cut(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), rec("g#0", group="g", group_size=2)])
    with path.open("ab") as handle:
        handle.write(json.dumps(rec("g#1", group="g", group_size=2)).encode()[:30])
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is True
    assert ids_of(path) == ["a"]


def test_complete_trailing_group_kept(tmp_path):
    rows = [rec("g#0", group="g", group_size=2), rec("g#1", group="g", group_size=2)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    state = prepare(path, HASH, overwrite=False, retry_errors=False)
    assert state.repaired_tail is False
    assert state.done == keys("g#0", "g#1")


def write_jsonl_append(path: Path, rows: list) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def test_other_config_hash_is_a_conflict(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), rec("b"), rec("c", config_hash=OTHER)])
    before = path.read_bytes()
    with pytest.raises(OutputConflictError) as info:
        prepare(path, HASH, overwrite=False, retry_errors=False)
    message = str(info.value)
    assert f"{path}:3" in message
    assert OTHER in message and HASH in message
    assert path.read_bytes() == before  # nothing touched


def test_missing_config_hash_is_a_conflict(tmp_path):
    row = rec("a")
    del row["config_hash"]
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    with pytest.raises(OutputConflictError, match=":1"):
        prepare(path, HASH, overwrite=False, retry_errors=False)


@pytest.mark.parametrize("garbage", ["this is not json", '{"no_id": 1}', "[1, 2]", ""])
def test_garbage_line_in_the_middle_is_a_conflict(tmp_path, garbage):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), garbage, rec("b")])
    before = path.read_bytes()
    with pytest.raises(OutputConflictError) as info:
        prepare(path, HASH, overwrite=False, retry_errors=False)
    assert f"{path}:2" in str(info.value)
    assert path.read_bytes() == before


def test_overwrite_empties(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a", config_hash=OTHER), "garbage"])
    state = prepare(path, HASH, overwrite=True, retry_errors=False)
    assert path.read_bytes() == b""
    assert state.done == set() and state.kept == 0


def test_retry_errors_drops_errors_and_their_groups(tmp_path):
    rows = [
        rec("a"),
        rec("b", status="error"),
        rec("g#0", group="g", group_size=3),
        rec("g#1", group="g", group_size=3, status="error"),
        rec("g#2", group="g", group_size=3),
        rec("h#0", group="h", group_size=2),
        rec("h#1", group="h", group_size=2),
        rec("c"),
        rec("d", status="error"),
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    state = prepare(path, HASH, overwrite=False, retry_errors=True)
    assert ids_of(path) == ["a", "h#0", "h#1", "c"]
    assert state.dropped == 5
    assert state.kept == 4
    assert state.done == keys("a", "h#0", "h#1", "c")
    assert id_key("b") not in state.done and id_key("g#0") not in state.done
    assert not (tmp_path / "s.jsonl.tmp").exists()


def test_retry_errors_adjacent_groups(tmp_path):
    rows = [
        rec("g#0", group="g", group_size=2, status="error"),
        rec("g#1", group="g", group_size=2),
        rec("h#0", group="h", group_size=2),
        rec("h#1", group="h", group_size=2),
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    state = prepare(path, HASH, overwrite=False, retry_errors=True)
    assert ids_of(path) == ["h#0", "h#1"]
    assert state.dropped == 2


def test_retry_errors_without_errors_keeps_everything(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), rec("b")])
    before = path.read_bytes()
    state = prepare(path, HASH, overwrite=False, retry_errors=True)
    assert state.dropped == 0
    assert path.read_bytes() == before


def test_retry_errors_after_tail_repair(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a", status="error"), rec("b")])
    with path.open("ab") as handle:
        handle.write(b'{"id": "c"')
    state = prepare(path, HASH, overwrite=False, retry_errors=True)
    assert state.repaired_tail is True
    assert state.dropped == 1
    assert ids_of(path) == ["b"]


# --- RecordWriter ---------------------------------------------------------------------


def test_writer_one_line_per_record_utf8(tmp_path):
    path = tmp_path / "out.jsonl"
    writer = RecordWriter(path)
    writer.write([rec("a", instruction="färbe die Tasse rot ☕"), rec("b")])
    writer.write([rec("c")])
    writer.close()
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert "färbe die Tasse rot ☕" in text  # ensure_ascii=False
    assert "\\u" not in text
    lines = text.split("\n")
    assert lines[-1] == ""
    assert [json.loads(line)["id"] for line in lines[:-1]] == ["a", "b", "c"]


def test_writer_appends(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [rec("a")])
    writer = RecordWriter(path)
    writer.write([rec("b")])
    writer.close()
    writer.close()  # idempotent
    assert ids_of(path) == ["a", "b"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_writer_refuses_nan(tmp_path, value):
    path = tmp_path / "out.jsonl"
    writer = RecordWriter(path)
    with pytest.raises(ValueError):
        writer.write([rec("a"), rec("b", reward=value)])
    writer.close()
    assert path.read_bytes() == b""  # nothing half-written


def test_writer_to_stdout(capsys):
    writer = RecordWriter(None)
    writer.write([rec("a", instruction="ü")])
    writer.close()
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert json.loads(out)["instruction"] == "ü"


# --- misc ---------------------------------------------------------------------------------


def test_summary_path():
    assert summary_path(Path("x/scores.jsonl")) == Path("x/scores.summary.json")
    assert summary_path(Path("scores")) == Path("scores.summary.json")
    assert summary_path(Path("a/b.c.jsonl")) == Path("a/b.c.summary.json")


def test_read_records(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), "", rec("b")])
    assert [r["id"] for r in read_records(path)] == ["a", "b"]


@pytest.mark.parametrize("line", ["nope", '{"id": "x"}', "[1]"])
def test_read_records_bad_line(tmp_path, line):
    path = write_jsonl(tmp_path / "s.jsonl", [rec("a"), line])
    with pytest.raises(ValueError, match=":2"):
        list(read_records(path))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_records_refuses_non_finite_numbers(tmp_path, constant):
    line = json.dumps(rec("a")).replace('"reward": 0.5', f'"reward": {constant}')
    path = write_jsonl(tmp_path / "s.jsonl", [rec("b"), line])
    with pytest.raises(ValueError, match=":2"):
        list(read_records(path))
