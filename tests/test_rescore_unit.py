"""Recomputing rewards from stored raw scores, without a model (spatialreward.rescore),
and the record helpers it relies on (records.rank_group, records.pixel_box)."""

from __future__ import annotations

import math

import pytest

from conftest import write_jsonl
from spatialreward.aggregate import Scores, aggregate
from spatialreward.config import Aggregation, config_hash
from spatialreward.errors import ScoresFileError
from spatialreward.records import pixel_box, rank_group, reward_fields
from spatialreward.rescore import rescore, rescore_record
from spatialreward.results import read_records

JUDGE = "judge00000000001"
DEFAULT = Aggregation()
DIMS = ("success", "overediting", "naturalness", "artifacts")


def ok_record(rid, scores, agg=DEFAULT, **extra):
    reward = aggregate(Scores(*scores), agg)
    record = {
        "id": rid,
        "status": "ok",
        "error": None,
        **reward_fields(reward),
        "scores": dict(zip(DIMS, scores)),
        "reasoning": {"sc": "x", "pq": "y"},
        "judge_hash": JUDGE,
        "config_hash": config_hash(JUDGE, agg),
        "meta": {"category": "c"},
    }
    record.update(extra)
    return record


def error_record(rid, **extra):
    record = {
        "id": rid,
        "status": "error",
        "error": {"stage": "parse", "message": "no JSON"},
        "reward": None, "overall": None, "sc": None, "pq": None,
        "scores": None,
        "judge_hash": JUDGE,
        "config_hash": config_hash(JUDGE, DEFAULT),
    }
    record.update(extra)
    return record


def grouped(record, group, size, k):
    record.update(group=group, group_size=size, candidate=k, rank=None)
    return record


# --- rescore_record -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "agg",
    [
        Aggregation(strategy="min_geometric"),
        Aggregation(strategy="mean"),
        Aggregation(weights=(0.9, 0.1, 0.2, 0.8), alpha=0.3),
    ],
    ids=["min", "mean", "weighted"],
)
def test_rescore_record_matches_aggregate(agg):
    scores = (20, 12.5, 22, 9)
    record = ok_record("a", scores)
    out = rescore_record(record, agg)
    expected = aggregate(Scores(*scores), agg)
    assert out["reward"] == pytest.approx(expected.reward, abs=1e-6)
    assert out["overall"] == pytest.approx(expected.overall, abs=1e-6)
    assert out["sc"] == pytest.approx(expected.sc, abs=1e-6)
    assert out["pq"] == pytest.approx(expected.pq, abs=1e-6)
    assert out["reward"] != pytest.approx(record["reward"], abs=1e-4)  # it really changed
    # everything else untouched
    assert out["scores"] == record["scores"]
    assert out["reasoning"] == record["reasoning"]
    assert out["meta"] == record["meta"]
    assert out["judge_hash"] == JUDGE


def test_rescore_record_hand_computed_min_geometric():
    out = rescore_record(ok_record("a", (20, 15, 22, 18)), Aggregation(strategy="min_geometric"))
    assert out["reward"] == pytest.approx(math.sqrt(15 * 18) / 25, abs=1e-6)
    assert out["sc"] == pytest.approx(6.0)
    assert out["pq"] == pytest.approx(7.2)


def test_rescore_record_does_not_mutate_input():
    record = ok_record("a", (20, 15, 22, 18))
    snapshot = dict(record)
    rescore_record(record, Aggregation(strategy="mean"))
    assert record == snapshot


def test_rescore_same_aggregation_is_identity():
    record = ok_record("a", (20, 15, 22, 18))
    assert rescore_record(record, DEFAULT) == record


def test_config_hash_recomputed_from_judge_hash():
    agg = Aggregation(strategy="mean")
    out = rescore_record(ok_record("a", (20, 15, 22, 18)), agg)
    assert out["config_hash"] == config_hash(JUDGE, agg)
    assert out["config_hash"] != config_hash(JUDGE, DEFAULT)
    assert out["judge_hash"] == JUDGE


def test_record_without_judge_hash_keeps_config_hash():
    record = ok_record("a", (20, 15, 22, 18))
    del record["judge_hash"]
    out = rescore_record(record, Aggregation(strategy="mean"))
    assert out["config_hash"] == record["config_hash"]


def test_error_record_kept_with_null_scores():
    record = error_record("e")
    agg = Aggregation(strategy="mean")
    out = rescore_record(record, agg)
    assert out["status"] == "error"
    assert out["error"] == record["error"]
    assert out["scores"] is None
    assert out["reward"] is None and out["overall"] is None and out["sc"] is None and out["pq"] is None
    assert out["config_hash"] == config_hash(JUDGE, agg)


@pytest.mark.parametrize(
    "scores",
    [
        None,
        {},
        {"success": 20, "overediting": 15, "naturalness": 22},  # one missing
        {"success": 20, "overediting": 15, "naturalness": 22, "artifacts": 26},
        {"success": -1, "overediting": 15, "naturalness": 22, "artifacts": 18},
        {"success": "20", "overediting": 15, "naturalness": 22, "artifacts": 18},
        {"success": True, "overediting": 15, "naturalness": 22, "artifacts": 18},
        {"success": None, "overediting": 15, "naturalness": 22, "artifacts": 18},
    ],
    ids=repr,
)
def test_ok_record_with_bad_scores_raises(scores):
    record = ok_record("bad-one", (20, 15, 22, 18))
    record["scores"] = scores
    with pytest.raises(ScoresFileError, match="bad-one"):
        rescore_record(record, DEFAULT)


# --- rescore (streams and groups) ------------------------------------------------------------


def test_rescore_keeps_order_and_reranks_groups():
    agg = Aggregation(strategy="min_geometric")
    rows = [
        ok_record("solo", (10, 10, 10, 10)),
        grouped(ok_record("g#0", (25, 5, 25, 25)), "g", 3, 0),   # min -> 5*25
        grouped(ok_record("g#1", (15, 15, 15, 15)), "g", 3, 1),  # min -> 15*15 (best under min)
        grouped(error_record("g#2"), "g", 3, 2),
        ok_record("tail", (1, 2, 3, 4)),
    ]
    # under the default weighted aggregation g#0 beats g#1; under min_geometric it is the reverse
    assert rows[1]["reward"] > rows[2]["reward"]
    out = list(rescore(rows, agg))
    assert [r["id"] for r in out] == ["solo", "g#0", "g#1", "g#2", "tail"]
    by_id = {r["id"]: r for r in out}
    assert by_id["g#1"]["rank"] == 1
    assert by_id["g#0"]["rank"] == 2
    assert by_id["g#2"]["rank"] is None
    assert "rank" not in by_id["solo"] and "rank" not in by_id["tail"]
    for r in out:
        if r["status"] == "ok":
            assert r["reward"] == pytest.approx(aggregate(Scores(*[r["scores"][d] for d in DIMS]), agg).reward, abs=1e-6)


def test_rescore_ties_share_rank_competition_style():
    rows = [
        grouped(ok_record("g#0", (20, 20, 20, 20)), "g", 5, 0),
        grouped(ok_record("g#1", (10, 10, 10, 10)), "g", 5, 1),
        grouped(ok_record("g#2", (25, 25, 25, 25)), "g", 5, 2),
        grouped(ok_record("g#3", (20, 20, 20, 20)), "g", 5, 3),
        grouped(error_record("g#4"), "g", 5, 4),
    ]
    out = list(rescore(rows, Aggregation(strategy="mean")))
    assert [r["rank"] for r in out] == [2, 4, 1, 2, None]


def test_rescore_adjacent_groups_ranked_separately():
    rows = [
        grouped(ok_record("a#0", (10, 10, 10, 10)), "a", 2, 0),
        grouped(ok_record("a#1", (20, 20, 20, 20)), "a", 2, 1),
        grouped(ok_record("b#0", (5, 5, 5, 5)), "b", 2, 0),
        grouped(ok_record("b#1", (1, 1, 1, 1)), "b", 2, 1),
    ]
    out = list(rescore(rows, DEFAULT))
    assert [(r["id"], r["rank"]) for r in out] == [("a#0", 2), ("a#1", 1), ("b#0", 1), ("b#1", 2)]


def test_rescore_is_lazy():
    def rows():
        yield ok_record("a", (1, 1, 1, 1))
        raise AssertionError("read past the first record")

    assert next(rescore(rows(), DEFAULT))["id"] == "a"


def test_rescore_bad_record_raises():
    rows = [ok_record("a", (1, 1, 1, 1)), {**ok_record("b", (1, 1, 1, 1)), "scores": None}]
    with pytest.raises(ScoresFileError):
        list(rescore(rows, DEFAULT))


def test_read_scores_roundtrip(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [ok_record("a", (1, 2, 3, 4)), error_record("b")])
    assert [r["id"] for r in read_records(path)] == ["a", "b"]


def test_read_scores_missing_file(tmp_path):
    with pytest.raises(ScoresFileError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


def test_read_scores_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [ok_record("a", (1, 2, 3, 4)), "garbage"])
    with pytest.raises(ScoresFileError, match=":2"):
        list(read_records(path))


# --- records helpers ---------------------------------------------------------------------------


def test_rank_group_competition_ranking():
    records = [
        {"id": "a", "status": "ok", "reward": 0.9},
        {"id": "b", "status": "ok", "reward": 0.7},
        {"id": "c", "status": "error", "reward": None},
        {"id": "d", "status": "ok", "reward": 0.7},
        {"id": "e", "status": "ok", "reward": 0.1},
    ]
    assert [r["rank"] for r in rank_group(records)] == [1, 2, None, 2, 4]


def test_rank_group_all_errors():
    records = [{"id": "a", "status": "error", "reward": None}, {"id": "b", "status": "error", "reward": None}]
    assert [r["rank"] for r in rank_group(records)] == [None, None]


def test_rank_group_all_tied():
    records = [{"id": str(i), "status": "ok", "reward": 0.5} for i in range(3)]
    assert [r["rank"] for r in rank_group(records)] == [1, 1, 1]


def test_pixel_box():
    assert pixel_box([0, 0, 1000, 1000], (600, 400)) == [0, 0, 600, 400]
    assert pixel_box([100, 250, 500, 750], (600, 400)) == [60, 100, 300, 300]
    assert pixel_box([333, 0, 667, 1000], (300, 512)) == [100, 0, 200, 512]
    assert pixel_box([1, 1, 2, 2], None) is None


def test_raw_score_range_is_the_score_range():
    assert rescore_record(ok_record("top", (25, 25, 25, 25)), DEFAULT)["reward"] == pytest.approx(1.0)
    record = ok_record("over", (20, 15, 22, 18))
    record["scores"]["artifacts"] = 25.5
    with pytest.raises(ScoresFileError, match=r"'over': ok record without four raw scores in 0\.\.25$"):
        rescore_record(record, DEFAULT)
