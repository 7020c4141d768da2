"""Summary statistics and the terminal table (spatialreward.summary)."""

from __future__ import annotations

import numpy as np
import pytest

from spatialreward.summary import METRICS, quantile, render_table, summarize

DIMS = ("success", "overediting", "naturalness", "artifacts")


def ok(rid, reward, *, category=None, repaired=False, scores=(20, 15, 22, 18), config_hash="h1"):
    return {
        "id": rid,
        "status": "ok",
        "error": None,
        "reward": reward,
        "overall": reward * 10,
        "sc": reward * 9,
        "pq": reward * 8,
        "scores": dict(zip(DIMS, scores)),
        "repaired": repaired,
        "meta": {"category": category} if category else {},
        "config_hash": config_hash,
    }


def err(rid, stage, *, category=None, config_hash="h1"):
    return {
        "id": rid,
        "status": "error",
        "error": {"stage": stage, "message": "boom"},
        "reward": None,
        "overall": None,
        "sc": None,
        "pq": None,
        "scores": None,
        "repaired": False,
        "meta": {"category": category} if category else {},
        "config_hash": config_hash,
    }


REWARDS = [0.12, 0.5, 0.73, 0.31, 0.9, 0.64, 0.05, 0.5, 0.88, 0.42, 0.77]


@pytest.fixture
def records():
    rows = []
    for i, reward in enumerate(REWARDS):
        rows.append(ok(f"r{i}", reward, category="color" if i % 2 else "add", repaired=i in (1, 4),
                       scores=(i, 2 * i % 25, 25 - i, (3 * i) % 25)))
    rows += [err("e1", "input", category="add"), err("e2", "parse"), err("e3", "parse"), err("e4", "model")]
    return rows


def test_counts(records):
    summary = summarize(records, threshold=0.5)
    assert summary["total"] == 15
    assert summary["ok"] == 11
    assert summary["error"] == 4
    assert summary["errors_by_stage"] == {"input": 1, "model": 1, "parse": 2}
    assert summary["repaired"] == 2
    assert summary["threshold"] == 0.5
    assert summary["config_hash"] == "h1"


@pytest.mark.parametrize("metric", ["reward", "overall", "sc", "pq"])
def test_stats_match_numpy(records, metric):
    summary = summarize(records, threshold=0.5)
    values = np.array([r[metric] for r in records if r["status"] == "ok"])
    stats = summary["stats"][metric]
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["median"] == pytest.approx(np.percentile(values, 50))
    assert stats["p10"] == pytest.approx(np.percentile(values, 10))
    assert stats["p90"] == pytest.approx(np.percentile(values, 90))
    assert stats["min"] == pytest.approx(values.min())
    assert stats["max"] == pytest.approx(values.max())


@pytest.mark.parametrize("dim", DIMS)
def test_dimension_stats_match_numpy(records, dim):
    summary = summarize(records, threshold=0.5)
    values = np.array([r["scores"][dim] for r in records if r["status"] == "ok"], dtype=float)
    stats = summary["stats"][dim]
    for key, q in (("median", 50), ("p10", 10), ("p90", 90)):
        assert stats[key] == pytest.approx(np.percentile(values, q))
    assert stats["mean"] == pytest.approx(values.mean())


def test_all_metrics_present(records):
    assert set(summarize(records, 0.5)["stats"]) == set(METRICS)


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1, 0.7, 0.2, 0.9, 0.3, 0.4, 0.8]])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_quantile_matches_numpy_linear(values, q):
    assert quantile(sorted(values), q) == pytest.approx(np.percentile(values, q * 100))


def test_pass_rate_boundary_counts(records):
    summary = summarize(records, threshold=0.5)
    # >= 0.5: 0.5, 0.73, 0.9, 0.64, 0.5, 0.88, 0.77 -> 7 of 11
    assert summary["passed"] == 7
    assert summary["pass_rate"] == pytest.approx(7 / 11)


def test_pass_rate_threshold_equal_to_reward():
    rows = [ok("a", 0.6), ok("b", 0.59999), ok("c", 0.7), err("d", "parse")]
    summary = summarize(rows, threshold=0.6)
    assert summary["passed"] == 2
    assert summary["pass_rate"] == pytest.approx(2 / 3)  # errors excluded from the base


def test_pass_rate_extremes():
    rows = [ok("a", 0.0), ok("b", 1.0)]
    assert summarize(rows, threshold=0.0)["pass_rate"] == 1.0
    assert summarize(rows, threshold=1.0)["pass_rate"] == 0.5


def test_categories(records):
    summary = summarize(records, threshold=0.5)
    cats = summary["categories"]
    assert list(cats) == ["add", "color"]
    add_rewards = [r for i, r in enumerate(REWARDS) if i % 2 == 0]
    color_rewards = [r for i, r in enumerate(REWARDS) if i % 2 == 1]
    assert cats["add"]["total"] == len(add_rewards) + 1
    assert cats["add"]["ok"] == len(add_rewards)
    assert cats["add"]["error"] == 1
    assert cats["add"]["errors_by_stage"]["input"] == 1
    assert cats["color"]["total"] == len(color_rewards)
    assert cats["color"]["error"] == 0
    assert cats["add"]["stats"]["reward"]["mean"] == pytest.approx(np.mean(add_rewards))
    assert cats["color"]["stats"]["reward"]["median"] == pytest.approx(np.median(color_rewards))
    assert cats["color"]["pass_rate"] == pytest.approx(sum(r >= 0.5 for r in color_rewards) / len(color_rewards))


def test_no_categories_key_without_meta_category():
    summary = summarize([ok("a", 0.5), ok("b", 0.6)], threshold=0.5)
    assert "categories" not in summary


def test_non_string_category_ignored():
    row = ok("a", 0.5)
    row["meta"] = {"category": 3}
    assert "categories" not in summarize([row], 0.5)


def test_several_config_hashes_listed():
    summary = summarize([ok("a", 0.5, config_hash="h2"), ok("b", 0.6, config_hash="h1")], 0.5)
    assert summary["config_hash"] == ["h1", "h2"]


def test_only_errors():
    rows = [err("a", "input"), err("b", "model"), err("c", "parse")]
    summary = summarize(rows, threshold=0.5)
    assert summary["total"] == 3
    assert summary["ok"] == 0
    assert summary["error"] == 3
    assert summary["pass_rate"] is None
    assert all(stats is None for stats in summary["stats"].values())
    table = render_table(summary)
    assert "edits 3" in table
    assert "ok 0" in table
    assert "error 3" in table


def test_empty_input():
    summary = summarize([], threshold=0.5)
    assert summary["total"] == 0
    assert summary["pass_rate"] is None
    render_table(summary)


def test_render_table_contains_numbers(records):
    summary = summarize(records, threshold=0.5)
    table = render_table(summary)
    assert "edits 15" in table
    assert "ok 11" in table
    assert "error 4" in table
    assert "(input 1, model 1, parse 2)" in table
    assert "repaired 2" in table
    assert "pass rate at reward >= 0.5" in table
    assert f"{7 / 11:.1%} (7/11)" in table
    reward = summary["stats"]["reward"]
    reward_line = next(line for line in table.splitlines() if line.startswith("reward "))
    for key in ("mean", "median", "p10", "p90"):
        assert f"{reward[key]:.3f}" in reward_line
    sc_line = next(line for line in table.splitlines() if line.startswith("sc "))
    assert f"{summary['stats']['sc']['mean']:.2f}" in sc_line
    for metric in METRICS:
        assert any(line.startswith(metric) for line in table.splitlines())
    assert "add" in table and "color" in table
    add_line = next(line for line in table.splitlines() if line.startswith("add "))
    assert f"{summary['categories']['add']['stats']['reward']['mean']:.3f}" in add_line


def test_render_table_category_with_only_errors():
    rows = [ok("a", 0.8, category="good"), err("b", "parse", category="broken")]
    table = render_table(summarize(rows, 0.5))
    broken = next(line for line in table.splitlines() if line.startswith("broken"))
    assert broken.split()[1:] == ["1", "0", "1", "-", "-"]


def test_render_table_zero_mean_reward_category_shows_number():
    rows = [ok("a", 0.0, category="zero")]
    table = render_table(summarize(rows, 0.5))
    line = next(line for line in table.splitlines() if line.startswith("zero"))
    assert "0.000" in line
    assert "0.0%" in line
