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
    assert m["multi_source_rows"] == 1  # counted; judged with all their sources, so no split is reported
    assert "multi_source" not in m and "single_source" not in m


# -- the published variant: the authors' code breaks ties -----------------------

from spatialreward.aggregate import Scores, aggregate  # noqa: E402
from spatialreward.bench import run as bench_run  # noqa: E402
from spatialreward.bench.metrics import (  # noqa: E402
    group_metrics_published,
    index_ranked,
    published_overall,
)
from spatialreward.config import Aggregation, config_hash  # noqa: E402
from spatialreward.errors import ScoresFileError  # noqa: E402
from spatialreward.records import reward_fields  # noqa: E402

# Two raw-score tuples whose overall is the same real number (0.6*7 + 0.4*5 = 0.6*5 + 0.4*8 = 6.2),
# found by a search over 5..25: in the authors' floating-point order they differ in the last bit
# (A above B); our reward, rounded to 6 decimals, ties them.
A, B = (7, 5, 5, 5), (5, 8, 5, 5)


def raw(values, record_id="x"):
    """An ok record as the judge writes it: rounded reward and overall, the raw scores."""
    scores = Scores(*values)
    return {"id": record_id, "status": "ok", **reward_fields(aggregate(scores, Aggregation())),
            "scores": scores.to_dict()}


def their_overall(s1, s2, n, a):
    """The published evaluation's expression, written out as it is there."""
    return (0.6 * s1 / 2.5 + 0.4 * s2 / 2.5) ** 0.8 * (0.5 * n / 2.5 + 0.5 * a / 2.5) ** (1 - 0.8)


def test_the_last_bit_pair():
    a, b = published_overall(raw(A)["scores"]), published_overall(raw(B)["scores"])
    assert (a, b) == (their_overall(*A), their_overall(*B))
    assert a > b and math.nextafter(b, math.inf) == a  # one unit in the last place apart
    assert raw(A)["reward"] == raw(B)["reward"] == 0.237557  # and one reward once rounded
    assert raw(A)["overall"] == raw(B)["overall"]


def test_published_overall_is_the_reward_unrounded_in_their_order():
    for values in [(25, 25, 25, 25), (0, 10, 3, 17), (12, 18.5, 20, 7)]:
        assert published_overall(raw(values)["scores"]) == their_overall(*values)
        assert published_overall(raw(values)["scores"]) == approx(aggregate(Scores(*values), Aggregation()).overall)
    other = Aggregation("weighted_geometric", (0.3, 0.7, 1.0, 0.0), 0.5)
    assert published_overall(raw(A)["scores"], other) == (0.3 * 7 / 2.5 + 0.7 * 5 / 2.5) ** 0.5 * (1.0 * 5 / 2.5) ** 0.5
    mean = Aggregation("mean")  # not in their code: ours, unrounded
    assert published_overall(raw(B)["scores"], mean) == aggregate(Scores(*B), mean).overall
    with pytest.raises(ScoresFileError, match="'r1'.*four raw scores"):
        published_overall({"success": 3}, None, "r1")


def test_published_ranks_ties_in_index_order():
    assert index_ranked([5, 5, 5]) == [3, 2, 1]
    assert index_ranked([1, 2, 2]) == [1, 3, 2]  # order 1, 2, 0
    # an all-tie group: the experts' order, so everything is right
    published, strict = group_metrics_published([5, 5, 5]), group_metrics([5, 5, 5])
    assert published == {"exact_match": True, "top1": True, "kendall_tau": approx(1), "spearman_rho": approx(1),
                         "ndcg_published": approx(1)}
    assert strict["exact_match"] is False and strict["top1"] is False
    assert strict["kendall_tau"] == 0.0 and strict["spearman_rho"] == 0.0
    # a tie for second place keeps index order: right there, a tied pair for strict
    assert group_metrics_published([2, 1, 1]) == {"exact_match": True, "top1": True, "kendall_tau": approx(1),
                                                  "spearman_rho": approx(1), "ndcg_published": approx(1)}
    # the expert's best tied last: order 1, 2, 0
    m = group_metrics_published([1, 2, 2])
    assert m["exact_match"] is False and m["top1"] is False
    assert m["kendall_tau"] == approx(-1 / 3)  # (0,1) D, (0,2) D, (1,2) C
    assert m["spearman_rho"] == approx(1 - 6 * (4 + 1 + 1) / (3 * 8))  # ranks (3, 1, 2)
    s = group_metrics([1, 2, 2])
    assert s["kendall_tau"] == approx(-2 / math.sqrt(3 * 2))  # tau-b, one tied pair
    assert s["spearman_rho"] == approx(-1.5 / math.sqrt(2 * 1.5))  # ranks (3, 1.5, 1.5)
    assert group_metrics_published([0.4])["kendall_tau"] is None  # one candidate: undefined in both


def mer_items(*groups):
    return [{"group": g, "split": f"{len(ids)}pair", "label": label, "ids": ids} for g, label, ids in groups]


def test_mer_bench_both_variants_by_hand():
    t = (15, 15, 15, 15)
    records = {
        "tie#0": raw(t), "tie#1": raw(t), "tie#2": raw(t),     # an all-tie group
        "ab#0": raw(A), "ab#1": raw(B),                        # the last-bit pair, A first: right for them
        "ba#0": raw(B), "ba#1": raw(A),                        # B first: wrong for them
        "ok#0": raw((20, 20, 20, 20)), "ok#1": raw((10, 10, 10, 10)),  # no tie: the same in both
    }
    items = mer_items(("tie", "add", ["tie#0", "tie#1", "tie#2"]), ("ab", "add", ["ab#0", "ab#1"]),
                      ("ba", "remove", ["ba#0", "ba#1"]), ("ok", "remove", ["ok#0", "ok#1"]))
    published = mer_bench.evaluate(items, records, variant="published")
    strict = mer_bench.evaluate(items, records)
    assert strict == mer_bench.evaluate(items, records, variant="strict")
    p, s = published["overall"], strict["overall"]
    # published: tie right, ab right, ba wrong (tau -1), ok right
    assert p["exact_match"] == approx(3 / 4) and p["top1"] == approx(3 / 4)
    assert p["kendall_tau"] == approx((1 + 1 - 1 + 1) / 4) and p["spearman_rho"] == approx(0.5)
    assert p["ndcg_published"] == approx((1 + 1 + (2 / L3 + 1) / (2 + 1 / L3) + 1) / 4)
    assert "ndcg" not in p  # the textbook NDCG is not theirs
    # strict: the three tied groups are wrong (tau 0), only ok is right
    assert s["exact_match"] == approx(1 / 4) and s["top1"] == approx(1 / 4)
    assert s["kendall_tau"] == approx(1 / 4) and s["spearman_rho"] == approx(1 / 4)
    assert published["by_label"]["remove"]["exact_match"] == approx(1 / 2)
    assert strict["by_label"]["add"]["exact_match"] == 0.0
    # a rescored aggregation changes the published figures too
    other = Aggregation("weighted_geometric", (0.0, 1.0, 0.5, 0.5), 0.8)  # overediting only: 5 < 8
    assert mer_bench.evaluate(items[1:2], records, variant="published", aggregation=other)["overall"]["top1"] == 0.0


def test_pairs_both_variants_by_hand():
    records = {"a": raw(A, "a"), "b": raw(B, "b"), "hi": raw((20, 20, 20, 20), "hi"), "lo": raw((10, 10, 10, 10), "lo")}
    items = [{"prompt_source": "p", "sources": 1, "better": "a", "worse": "b"},   # right for them, a tie for us
             {"prompt_source": "p", "sources": 1, "better": "b", "worse": "a"},   # wrong in both
             {"prompt_source": "q", "sources": 1, "better": "hi", "worse": "lo"}]  # right in both
    assert mmrb2.evaluate(items, records, variant="published")["overall"]["accuracy"] == approx(2 / 3)
    assert mmrb2.evaluate(items, records)["overall"]["accuracy"] == approx(1 / 3)

    def row(task, dim, better, worse):
        return {"task_type": task, "dimension": dim, "better": better, "worse": worse}

    erb = [row("add", "overall", "a", "b"), row("add", "overall", "hi", "lo"), row("remove", "overall", "b", "a"),
           row("add", "prompt_following", "a", "b"),  # success 7 > 5: right in both
           row("add", "consistency", "a", "b")]  # overediting 5 < 8: wrong in both
    published = editreward_bench.evaluate(erb, records, variant="published")
    strict = editreward_bench.evaluate(erb, records)
    assert published["dimensions"]["overall"]["accuracy"] == approx((1.0 + 0.0) / 2)
    assert strict["dimensions"]["overall"]["accuracy"] == approx((0.5 + 0.0) / 2)
    # "remove" has rows under overall only: its empty cells count 0.0 for them, are left out by us
    assert published["dimensions"]["prompt_following"]["accuracy"] == approx((1.0 + 0.0) / 2)
    assert published["dimensions"]["prompt_following"]["empty_cells"] == ["remove"]
    assert published["dimensions"]["overall"]["empty_cells"] == []
    assert strict["dimensions"]["prompt_following"]["accuracy"] == 1.0
    assert "empty_cells" not in strict["dimensions"]["prompt_following"]
    assert published["dimensions"]["consistency"]["accuracy"] == strict["dimensions"]["consistency"]["accuracy"] == 0.0
    text = editreward_bench.markdown(bench_run.evaluate("editreward-bench", erb, records, aggregation=None,
                                                        scores="x"), {})
    assert "| remove | published | 0.000 (no rows) | 0.000 (no rows) | 0.000 (1/1) |" in text
    assert "|  | strict |  |  | 0.000 (1/1) |" in text


def test_run_evaluate_variants_and_the_recorded_aggregation():
    records = {"ab#0": raw(A, "ab#0"), "ab#1": raw(B, "ab#1")}
    items = mer_items(("ab", "add", ["ab#0", "ab#1"]))
    both = bench_run.evaluate("mer-bench", items, records, aggregation=None, scores="s")
    assert both["metrics"] == ["published", "strict"]
    assert both["published"]["overall"]["exact_match"] == 1.0 and both["strict"]["overall"]["exact_match"] == 0.0
    # the strict figures also where earlier readers find them
    assert both["overall"] == both["strict"]["overall"] and both["by_split"] == both["strict"]["by_split"]
    assert both["primary"] == {"name": "exact_match", "value": 0.0, "variant": "strict"}
    assert both["published"]["primary"] == {"name": "exact_match", "value": 1.0}
    assert both["published_aggregation"] == {"strategy": "weighted_geometric", "weights": (0.6, 0.4, 0.5, 0.5),
                                             "alpha": 0.8}
    only = bench_run.evaluate("mer-bench", items, records, aggregation=None, scores="s", variants=("published",))
    assert only["metrics"] == ["published"] and "strict" not in only and "overall" not in only
    assert only["primary"] == {"name": "exact_match", "value": 1.0, "variant": "published"}
    text = bench_run.markdown("mer-bench", both)
    assert "| **all** | published | 1 | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | - |" in text
    assert "|  | strict | 1 | 1 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | " in text
    assert "published: " in text and "strict: " in text
    assert "strict" not in bench_run.markdown("mer-bench", only).split("## MER-Bench")[1].split("\n\n")[1]
    # the published figures recombine the raw scores as the run did: checked on config_hash
    default = Aggregation()
    stamped = {k: {**r, "judge_hash": "j", "config_hash": config_hash("j", default)} for k, r in records.items()}
    assert bench_run.recorded_aggregation(stamped, default) == default
    with pytest.raises(ScoresFileError, match="another aggregation than alpha 0.5.*--metrics strict"):
        bench_run.recorded_aggregation(stamped, Aggregation(alpha=0.5))
