"""The published aggregation of four raw scores into one reward (spatialreward.aggregate).

Every expected value below is computed by hand from the formulas (scores on
0..25 are first divided by 2.5), not by calling the package.
"""

from __future__ import annotations

import math

import pytest

from spatialreward.aggregate import Scores, aggregate
from spatialreward.config import Aggregation

DEFAULT = Aggregation()


def test_defaults():
    assert DEFAULT.strategy == "weighted_geometric"
    assert DEFAULT.weights == (0.6, 0.4, 0.5, 0.5)
    assert DEFAULT.alpha == 0.8


def test_weighted_geometric_defaults_by_hand():
    # s1=20, s2=15, n=22, a=18
    # SC = (0.6*20 + 0.4*15)/2.5 = (12 + 6)/2.5 = 7.2
    # PQ = (0.5*22 + 0.5*18)/2.5 = 20/2.5 = 8.0
    # O = 7.2**0.8 * 8**0.2
    r = aggregate(Scores(20, 15, 22, 18), DEFAULT)
    assert r.sc == pytest.approx(7.2)
    assert r.pq == pytest.approx(8.0)
    expected = 7.2**0.8 * 8.0**0.2
    assert expected == pytest.approx(7.35, abs=0.01)
    assert r.overall == pytest.approx(expected)
    assert r.reward == pytest.approx(expected / 10)


def test_weighted_geometric_custom_weights_and_alpha():
    agg = Aggregation(weights=(0.3, 0.7, 0.9, 0.1), alpha=0.5)
    # SC = (0.3*10 + 0.7*20)/2.5 = 17/2.5 = 6.8 ; PQ = (0.9*5 + 0.1*25)/2.5 = 7/2.5 = 2.8
    r = aggregate(Scores(10, 20, 5, 25), agg)
    assert r.sc == pytest.approx(6.8)
    assert r.pq == pytest.approx(2.8)
    assert r.overall == pytest.approx(math.sqrt(6.8 * 2.8))
    assert r.reward == pytest.approx(math.sqrt(6.8 * 2.8) / 10)


def test_weighted_geometric_alpha_one_ignores_pq():
    r = aggregate(Scores(25, 0, 0, 0), Aggregation(alpha=1.0))
    # SC = 0.6*25/2.5 = 6 ; PQ = 0 ; O = 6**1 * 0**0 = 6
    assert r.sc == pytest.approx(6.0)
    assert r.pq == 0.0
    assert r.overall == pytest.approx(6.0)
    assert r.reward == pytest.approx(0.6)


def test_weighted_geometric_clamps_when_weights_sum_over_one():
    agg = Aggregation(weights=(1.0, 1.0, 2.0, 0.5))
    # SC raw = (25 + 25)/2.5 = 20 -> 10 ; PQ raw = (2*25 + 0.5*25)/2.5 = 25 -> 10
    r = aggregate(Scores(25, 25, 25, 25), agg)
    assert r.sc == 10.0
    assert r.pq == 10.0
    assert r.overall == pytest.approx(10.0)
    assert r.reward == pytest.approx(1.0)
    assert r.reward <= 1.0


def test_weighted_geometric_clamp_one_side_only():
    agg = Aggregation(weights=(1.0, 1.0, 0.5, 0.5))
    # SC raw = (20 + 10)/2.5 = 12 -> 10 ; PQ = (0.5*10 + 0.5*10)/2.5 = 4
    r = aggregate(Scores(20, 10, 10, 10), agg)
    assert r.sc == 10.0
    assert r.pq == pytest.approx(4.0)
    assert r.overall == pytest.approx(10.0**0.8 * 4.0**0.2)


def test_min_geometric_by_hand():
    agg = Aggregation(strategy="min_geometric")
    # O = sqrt(min(20, 15) * min(22, 18)) / 2.5 = sqrt(15*18)/2.5
    r = aggregate(Scores(20, 15, 22, 18), agg)
    assert r.sc == pytest.approx(15 / 2.5)
    assert r.pq == pytest.approx(18 / 2.5)
    assert r.overall == pytest.approx(math.sqrt(15 * 18) / 2.5)
    assert r.reward == pytest.approx(math.sqrt(15 * 18) / 25)


def test_min_geometric_ignores_weights():
    a = aggregate(Scores(5, 24, 12, 3), Aggregation(strategy="min_geometric"))
    b = aggregate(Scores(5, 24, 12, 3), Aggregation(strategy="min_geometric", weights=(1, 0, 0, 1), alpha=0.1))
    assert a == b
    assert a.overall == pytest.approx(math.sqrt(5 * 3) / 2.5)


def test_mean_by_hand():
    agg = Aggregation(strategy="mean")
    # O = sqrt(mean(20, 15)/2.5 * mean(22, 18)/2.5) = sqrt(7 * 8)
    r = aggregate(Scores(20, 15, 22, 18), agg)
    assert r.sc == pytest.approx(7.0)
    assert r.pq == pytest.approx(8.0)
    assert r.overall == pytest.approx(math.sqrt(56))
    assert r.reward == pytest.approx(math.sqrt(56) / 10)


def test_strategies_differ_on_unbalanced_scores():
    scores = Scores(25, 5, 20, 10)
    values = {s: aggregate(scores, Aggregation(strategy=s)).overall for s in ("weighted_geometric", "min_geometric", "mean")}
    assert values["min_geometric"] == pytest.approx(math.sqrt(5 * 10) / 2.5)
    assert values["mean"] == pytest.approx(math.sqrt(15 / 2.5 * 15 / 2.5))
    wsc, wpq = (0.6 * 25 + 0.4 * 5) / 2.5, (0.5 * 20 + 0.5 * 10) / 2.5
    assert values["weighted_geometric"] == pytest.approx(wsc**0.8 * wpq**0.2)
    assert len({round(v, 6) for v in values.values()}) == 3


@pytest.mark.parametrize("strategy", ["weighted_geometric", "min_geometric", "mean"])
def test_all_max_gives_reward_one(strategy):
    r = aggregate(Scores(25, 25, 25, 25), Aggregation(strategy=strategy))
    assert r.sc == pytest.approx(10.0)
    assert r.pq == pytest.approx(10.0)
    assert r.overall == pytest.approx(10.0)
    assert r.reward == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", ["weighted_geometric", "min_geometric", "mean"])
def test_all_zero_gives_reward_zero(strategy):
    r = aggregate(Scores(0, 0, 0, 0), Aggregation(strategy=strategy))
    assert r.sc == 0.0
    assert r.pq == 0.0
    assert r.overall == 0.0
    assert r.reward == 0.0


@pytest.mark.parametrize("strategy", ["weighted_geometric", "min_geometric", "mean"])
def test_zero_quality_zeroes_reward(strategy):
    r = aggregate(Scores(25, 25, 0, 0), Aggregation(strategy=strategy))
    assert r.reward == 0.0


def test_reward_monotonic_in_success():
    low = aggregate(Scores(10, 15, 20, 20), DEFAULT).reward
    high = aggregate(Scores(11, 15, 20, 20), DEFAULT).reward
    assert high > low


def test_unknown_strategy_raises():
    with pytest.raises(ValueError, match="bogus"):
        aggregate(Scores(1, 1, 1, 1), Aggregation(strategy="bogus"))


def test_scores_to_dict():
    assert Scores(1, 2.5, 3, 4).to_dict() == {"success": 1, "overediting": 2.5, "naturalness": 3, "artifacts": 4}
