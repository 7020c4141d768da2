"""Benchmark metrics on hand-computed cases: ties, reversed rankings,
one-element groups, and missing or error records (not judged, never right)."""

from __future__ import annotations

import math

import pytest

from spatialreward.bench import editreward_bench, mer_bench, mmrb2
from spatialreward.bench.metrics import (
    competition_rank,
    exact_match,
    group_metrics,
    kendall_tau,
    ndcg_published,
    ndcg_standard,
    pair_correct,
    predicted_order,
    spearman_rho,
    top1,
    unweighted_mean,
)

L3 = math.log2(3)
IDEAL3 = 3 + 2 / L3 + 1 / 2  # 4.76186...


def approx(x):
    return pytest.approx(x, abs=1e-9)


def test_perfect_ranking():
    m = group_metrics([0.9, 0.5, 0.1])
    assert m == {"exact_match": True, "top1": True, "kendall_tau": approx(1), "spearman_rho": approx(1),
                 "ndcg_published": approx(1), "ndcg": approx(1)}


def test_reversed_ranking():
    scores = [0.1, 0.5, 0.9]
    assert predicted_order(scores) == [2, 1, 0]
    assert not exact_match(scores) and not top1(scores)
    assert kendall_tau(scores) == approx(-1) and spearman_rho(scores) == approx(-1)
    # order [2, 1, 0] is its own inverse: both NDCGs agree.
    expected = (3 / 2 + 2 / L3 + 1 / 1) / IDEAL3
    assert ndcg_published(scores) == approx(expected) == pytest.approx(0.789998, abs=1e-6)
    assert ndcg_standard(scores) == approx(expected)


def test_three_cycle_separates_the_published_ndcg_from_the_standard_one():
    scores = [1, 3, 2]  # predicted order [1, 2, 0]
    assert predicted_order(scores) == [1, 2, 0]
    # published: sum_i (n-i)/log2(pred_rank[i]+2), pred_rank = [1, 2, 0]
    assert ndcg_published(scores) == approx((3 / L3 + 2 / 2 + 1 / 1) / IDEAL3) == pytest.approx(0.817494, abs=1e-6)
    # standard: position p holds candidate c with gain n-c: 2/1 + 1/log2(3) + 3/2
    assert ndcg_standard(scores) == approx((2 / 1 + 1 / L3 + 3 / 2) / IDEAL3) == pytest.approx(0.867503, abs=1e-6)
    assert kendall_tau(scores) == approx(-1 / 3)  # (0,1) D, (0,2) D, (1,2) C
    assert spearman_rho(scores) == approx(-0.5)  # 1 - 6*(4+1+1)/(3*8)
    assert not exact_match(scores) and not top1(scores)


def test_a_tie_is_wrong_for_exact_match_and_top1():
    scores = [2, 2, 1]
    assert not exact_match(scores) and not top1(scores)
    assert kendall_tau(scores) == approx(2 / math.sqrt(3 * 2))  # tau-b: C=2, D=0, one tied pair
    assert spearman_rho(scores) == approx(1.5 / math.sqrt(2 * 1.5))  # ranks (1.5, 1.5, 3)
    # published: a stable argsort keeps tied candidates in index order
    assert ndcg_published(scores) == approx(1)
    # standard: the tied candidates share the mean discount of positions 0 and 1
    assert ndcg_standard(scores) == approx(((1 + 1 / L3) / 2 * (3 + 2) + 1 / 2) / IDEAL3) == pytest.approx(0.961247, abs=1e-6)
    assert not exact_match([0.5, 0.7, 0.7])
    assert exact_match([0.3, 0.2]) and not exact_match([0.2, 0.2])


def test_all_tied_group():
    scores = [5, 5]
    m = group_metrics(scores)
    assert m["exact_match"] is False and m["top1"] is False
    assert m["kendall_tau"] == 0.0 and m["spearman_rho"] == 0.0  # no ordering at all
    ideal = 2 + 1 / L3
    assert m["ndcg"] == approx((1 + 1 / L3) / 2 * 3 / ideal)
    assert m["ndcg_published"] == approx(1)


def test_one_element_group():
    m = group_metrics([0.4])
    assert m["exact_match"] is True and m["top1"] is True
    assert m["kendall_tau"] is None and m["spearman_rho"] is None  # undefined: not averaged
    assert m["ndcg"] == approx(1) and m["ndcg_published"] == approx(1)


def test_pairs_ties_are_wrong():
    assert pair_correct(0.6, 0.5)
    assert not pair_correct(0.5, 0.5)
    assert not pair_correct(0.4, 0.5)


def test_helpers():
    assert unweighted_mean([0.5, None, 1.0]) == approx(0.75)
    assert unweighted_mean([None]) is None
    assert [competition_rank([0.5, 0.7, 0.7, 0.2], i) for i in range(4)] == [3, 1, 1, 4]


def ok(reward, success=12.5, overediting=12.5, overall=None):
    return {"status": "ok", "reward": reward, "overall": overall if overall is not None else 10 * reward,
            "scores": {"success": success, "overediting": overediting, "naturalness": 10, "artifacts": 10}}


ERROR = {"status": "error", "error": {"stage": "parse", "message": "x"}}


def test_mer_bench_units_with_errors_or_missing_records_are_not_judged():
    items = [
        {"group": "2pair/a", "split": "2pair", "label": "add", "ids": ["a#0", "a#1"]},
        {"group": "2pair/b", "split": "2pair", "label": "add", "ids": ["b#0", "b#1"]},  # error record
        {"group": "3pair/c", "split": "3pair", "label": "remove", "ids": ["c#0", "c#1", "c#2"]},  # missing
        {"group": "3pair/d", "split": "3pair", "label": "remove", "ids": ["d#0", "d#1", "d#2"]},  # reversed
        {"group": "2pair/e", "split": "2pair", "label": "remove", "ids": [], "invalid": "no edited images"},
    ]
    records = {"a#0": ok(0.8), "a#1": ok(0.3), "b#0": ok(0.9), "b#1": ERROR, "c#0": ok(0.5), "c#1": ok(0.4),
               "d#0": ok(0.1), "d#1": ok(0.2), "d#2": ok(0.3)}
    m = mer_bench.evaluate(items, records)
    overall = m["overall"]
    assert overall["units"] == 5 and overall["judged"] == 2 and overall["not_judged"] == 3
    assert overall["not_judged_by"] == {"error": 1, "invalid row": 1, "missing": 1}
    assert overall["exact_match"] == approx(0.5)  # a right, d wrong
    assert overall["exact_match_all"] == approx(1 / 5)  # not judged counted wrong: never right
    assert overall["kendall_tau"] == approx(0.0)  # (1 + -1) / 2
    assert m["by_split"]["3pair"]["judged"] == 1 and m["by_split"]["3pair"]["not_judged_by"] == {"missing": 1}
    assert m["by_label"]["add"]["exact_match"] == approx(1.0)
    assert m["by_label"]["add"]["not_judged_by"] == {"error": 1}
    assert mer_bench.primary(m) == approx(0.5)


def test_mer_bench_one_candidate_group_has_undefined_correlations():
    m = mer_bench.evaluate([{"group": "g", "split": "2pair", "label": "x", "ids": ["g#0"]}], {"g#0": ok(0.5)})
    assert m["overall"]["exact_match"] == 1.0 and m["overall"]["kendall_tau"] is None
    assert m["overall"]["kendall_tau_undefined"] == 1


def test_editreward_bench_dimension_scores_and_unweighted_mean_over_task_types():
    # success 20 vs 10 -> prompt_following right; overediting equal -> consistency a tie (wrong).
    records = {"x": ok(0.7, success=20, overediting=15, overall=7.0),
               "y": ok(0.6, success=10, overediting=15, overall=6.0),
               "z": ok(0.65, success=10, overediting=5, overall=6.5), "e": ERROR}

    def row(task, dim, better, worse):
        return {"task_type": task, "dimension": dim, "better": better, "worse": worse}

    items = [
        row("add", "overall", "x", "y"),   # 7.0 > 6.0 right
        row("add", "overall", "y", "z"),   # 6.0 < 6.5 wrong
        row("remove", "overall", "z", "y"),  # right
        row("remove", "overall", "e", "y"),  # error: not judged
        row("add", "prompt_following", "x", "y"),  # 8 > 4 right
        row("add", "consistency", "x", "y"),  # 6 == 6: a tie, wrong
        row("add", "consistency", "y", "z"),  # 6 > 2 right
        {"task_type": "add", "dimension": "overall", "invalid": "1 output images, not 2"},
    ]
    m = editreward_bench.evaluate(items, records)
    overall = m["dimensions"]["overall"]
    assert overall["by_task_type"]["add"]["accuracy"] == approx(0.5)
    assert overall["by_task_type"]["remove"]["accuracy"] == approx(1.0)
    assert overall["by_task_type"]["remove"]["not_judged_by"] == {"error": 1}
    assert overall["accuracy"] == approx(0.75)  # unweighted over task types (micro would be 2/3)
    assert overall["micro"]["accuracy"] == approx(2 / 3)
    assert m["dimensions"]["prompt_following"]["accuracy"] == approx(1.0)
    assert m["dimensions"]["consistency"]["accuracy"] == approx(0.5)
    assert m["overall"]["units"] == 8 and m["overall"]["judged"] == 6
    assert m["overall"]["not_judged_by"] == {"error": 1, "invalid row": 1}
    assert editreward_bench.primary(m) == approx(0.75)


def test_mmrb2_accuracy_by_source_and_multi_source_rows():
    records = {"a": ok(0.8), "b": ok(0.5), "c": ok(0.5), "d": ok(0.4)}
    items = [
        {"prompt_source": "p1", "sources": 1, "better": "a", "worse": "b"},  # right
        {"prompt_source": "p1", "sources": 2, "better": "b", "worse": "c"},  # tie: wrong
        {"prompt_source": "p2", "sources": 1, "better": "d", "worse": "a"},  # wrong
        {"prompt_source": "p2", "sources": 1, "better": "a", "worse": "missing"},  # not judged
    ]
    m = mmrb2.evaluate(items, records)
    assert m["overall"]["accuracy"] == approx(1 / 3) and m["overall"]["accuracy_all"] == approx(1 / 4)
    assert m["overall"]["not_judged_by"] == {"missing": 1}
    assert m["by_prompt_source"]["p1"]["accuracy"] == approx(0.5)
    assert m["multi_source_rows"] == 1 and m["multi_source"]["accuracy"] == 0.0
    assert m["single_source"]["accuracy"] == approx(0.5) and m["single_source"]["judged"] == 2
