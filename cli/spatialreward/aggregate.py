"""The published aggregation of the four raw scores (0..25) into one reward in [0, 1].

All scores are first mapped to 0..10 (divided by 2.5):

- ``weighted_geometric``: SC = (w1*s1 + w2*s2)/2.5, PQ = (w3*n + w4*a)/2.5, both
  clamped to [0, 10]; overall O = SC**alpha * PQ**(1 - alpha).
- ``min_geometric``: SC = min(s1, s2)/2.5, PQ = min(n, a)/2.5, O = sqrt(SC*PQ).
- ``mean``: SC = mean(s1, s2)/2.5, PQ = mean(n, a)/2.5, O = sqrt(SC*PQ).

reward = O/10, clamped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Aggregation
from .constants import SCORE_RANGE

TO_TEN = SCORE_RANGE / 10.0  # 2.5
DIMENSIONS = ("success", "overediting", "naturalness", "artifacts")


@dataclass(frozen=True)
class Scores:
    """Raw model scores, each on 0..25."""

    success: float
    overediting: float
    naturalness: float
    artifacts: float

    def to_dict(self) -> dict:
        return {d: getattr(self, d) for d in DIMENSIONS}


@dataclass(frozen=True)
class Reward:
    sc: float  # 0..10
    pq: float  # 0..10
    overall: float  # 0..10
    reward: float  # 0..1


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def aggregate(scores: Scores, agg: Aggregation) -> Reward:
    s1, s2, n, a = scores.success, scores.overediting, scores.naturalness, scores.artifacts
    if agg.strategy == "weighted_geometric":
        w1, w2, w3, w4 = agg.weights
        sc = _clamp((w1 * s1 + w2 * s2) / TO_TEN, 0.0, 10.0)
        pq = _clamp((w3 * n + w4 * a) / TO_TEN, 0.0, 10.0)
        overall = sc**agg.alpha * pq ** (1.0 - agg.alpha)
    elif agg.strategy == "min_geometric":
        sc = min(s1, s2) / TO_TEN
        pq = min(n, a) / TO_TEN
        overall = math.sqrt(sc * pq)
    elif agg.strategy == "mean":
        sc = (s1 + s2) / 2.0 / TO_TEN
        pq = (n + a) / 2.0 / TO_TEN
        overall = math.sqrt(sc * pq)
    else:  # validated in config; keep the failure loud
        raise ValueError(f"unknown aggregation strategy {agg.strategy!r}")
    overall = _clamp(overall, 0.0, 10.0)
    return Reward(sc=sc, pq=pq, overall=overall, reward=_clamp(overall / 10.0, 0.0, 1.0))
