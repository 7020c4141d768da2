"""Benchmark metrics as pure functions (no I/O, no model).

Conventions, shared by every benchmark:

- A *unit* (a ranked group, a pair) is **judged** only when every record it
  needs is an ok record. A unit with a missing or an error record is **not
  judged**: it is counted (``not_judged``, with the reason) and reported, never
  dropped silently and never counted right. ``accuracy`` is over judged units;
  ``accuracy_all`` counts the not-judged ones as wrong (a lower bound).
- Two variants. **strict** (``group_metrics``, ``pair_correct`` on the
  recorded reward, rounded to 6 decimals): **ties are wrong**: a pair is right
  only when the better item's score is strictly higher; a ranking is an exact
  match only when no two candidates tie. **published**
  (``group_metrics_published`` on ``published_overall``): the authors'
  definitions as their evaluation code computes them: the overall score from
  the raw scores in their floating-point order, never rounded, and candidates
  ranked by a stable sort, so tied candidates keep their index order (the
  experts' order). Pairs are right iff strictly higher in both.

Ranked groups (MER-Bench): ``scores[i]`` is the score of the candidate the
experts ranked ``i``-th (0 = best), so the expert order is ``0, 1, ..., n-1``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

from ..aggregate import DIMENSIONS, Scores, aggregate
from ..config import Aggregation
from ..constants import SCORE_RANGE
from ..errors import ScoresFileError
from ..numbers import is_number

VARIANTS = ("published", "strict")

VARIANT_NOTES = {
    "published": "published: the authors' definitions as their evaluation code computes them: the overall score "
                 "recomputed from the raw scores in floating point, never rounded",
    "strict": "strict: from the recorded reward and overall (rounded to 6 decimals); a tie is always wrong",
}


def variant_notes(variants, extra: dict | None = None) -> list[str]:
    """One line per variant shown: how its figures are computed (``extra``: the benchmark's own rules)."""
    extra = extra or {}
    return [VARIANT_NOTES[v] + (f"; {extra[v]}" if extra.get(v) else "") + "." for v in variants]


# -- one ranked group ----------------------------------------------------------

def predicted_order(scores: Sequence[float]) -> list[int]:
    """Candidate indices sorted by score, best first. Ties keep index order
    (a stable sort, as numpy's argsort does on such short arrays)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def has_tie(scores: Sequence[float]) -> bool:
    return len(set(scores)) < len(scores)


def exact_match(scores: Sequence[float]) -> bool:
    """The full predicted ranking equals the expert ranking; any tie is wrong."""
    return not has_tie(scores) and all(scores[i] > scores[i + 1] for i in range(len(scores) - 1))


def top1(scores: Sequence[float]) -> bool:
    """The expert's best candidate is predicted first, strictly (a tie for first is wrong)."""
    return all(scores[0] > s for s in scores[1:])


def kendall_tau(scores: Sequence[float]) -> float | None:
    """Kendall's tau-b between the expert ranking (no ties) and the scores.

    None for a one-candidate group (undefined); 0.0 when every score ties
    (no ordering at all: neither concordant nor discordant)."""
    n = len(scores)
    if n < 2:
        return None
    concordant = discordant = tied = 0
    for i in range(n):
        for j in range(i + 1, n):  # the experts put i before j
            if scores[i] > scores[j]:
                concordant += 1
            elif scores[i] < scores[j]:
                discordant += 1
            else:
                tied += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt(pairs * (pairs - tied))
    return 0.0 if denominator == 0 else (concordant - discordant) / denominator


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 = highest value; tied values share the mean of their ranks."""
    order = predicted_order(values)
    ranks = [0.0] * len(values)
    position = 0
    while position < len(order):
        end = position
        while end + 1 < len(order) and values[order[end + 1]] == values[order[position]]:
            end += 1
        mean_rank = (position + end) / 2 + 1
        for k in range(position, end + 1):
            ranks[order[k]] = mean_rank
        position = end + 1
    return ranks


def spearman_rho(scores: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson correlation of the expert ranks (1..n) and the
    predicted ranks (ties averaged). None for one candidate; 0.0 when every
    score ties."""
    n = len(scores)
    if n < 2:
        return None
    expert = [float(i + 1) for i in range(n)]
    predicted = _average_ranks(scores)
    mean_e, mean_p = sum(expert) / n, sum(predicted) / n
    cov = sum((e - mean_e) * (p - mean_p) for e, p in zip(expert, predicted))
    var_e = sum((e - mean_e) ** 2 for e in expert)
    var_p = sum((p - mean_p) ** 2 for p in predicted)
    return 0.0 if var_p == 0 else cov / math.sqrt(var_e * var_p)


def ndcg_published(scores: Sequence[float]) -> float:
    """The NDCG figure as published for MER-Bench:

        sum_i (n-i)/log2(pred_rank[i]+2) / sum_i (n-i)/log2(i+2)

    with ``pred_rank = predicted_order(scores)`` (candidate indices, best
    first). It weighs position i's gain by the *candidate index* found there,
    which is not the textbook NDCG (see ``ndcg_standard``) whenever the
    predicted order is not its own inverse permutation (e.g. a 3-cycle)."""
    n = len(scores)
    pred_rank = predicted_order(scores)
    dcg = sum((n - i) / math.log2(pred_rank[i] + 2) for i in range(n))
    ideal = sum((n - i) / math.log2(i + 2) for i in range(n))
    return dcg / ideal


def ndcg_standard(scores: Sequence[float]) -> float:
    """Textbook NDCG with linear gains: candidate i (expert rank i) has
    relevance n-i; DCG = sum over predicted positions p of rel/log2(p+2).
    Tied candidates share the mean discount of the positions they span (as
    scikit-learn's ``ndcg_score`` does), so a tie is never resolved in the
    expert's favour."""
    n = len(scores)
    order = predicted_order(scores)
    dcg = 0.0
    position = 0
    while position < n:
        end = position
        while end + 1 < n and scores[order[end + 1]] == scores[order[position]]:
            end += 1
        discount = sum(1 / math.log2(p + 2) for p in range(position, end + 1)) / (end - position + 1)
        dcg += discount * sum(n - order[k] for k in range(position, end + 1))
        position = end + 1
    ideal = sum((n - i) / math.log2(i + 2) for i in range(n))
    return dcg / ideal


def group_metrics(scores: Sequence[float]) -> dict:
    """Every ranked-group metric of one judged group."""
    return {
        "exact_match": exact_match(scores),
        "top1": top1(scores),
        "kendall_tau": kendall_tau(scores),
        "spearman_rho": spearman_rho(scores),
        "ndcg_published": ndcg_published(scores),
        "ndcg": ndcg_standard(scores),
    }


# -- the published variant ----------------------------------------------------

PUBLISHED_GROUP_METRICS = ("exact_match", "top1", "kendall_tau", "spearman_rho", "ndcg_published")


def published_overall(raw: dict | None, aggregation: Aggregation | None = None, record_id=None) -> float:
    """The overall score (0..10) as the authors' evaluation code computes it
    from the four raw scores (0..25), in floating point, never rounded.

    ``weighted_geometric`` (the default) is evaluated in their order of
    operations, ``(w1*s1/2.5 + w2*s2/2.5)**alpha * (w3*n/2.5 + w4*a/2.5)**(1-alpha)``,
    which is not always ours (``(w1*s1 + w2*s2)/2.5``) to the last bit; the
    other strategies, which their code does not have, are ours, unrounded."""
    values = [(raw or {}).get(d) for d in DIMENSIONS]
    if not all(is_number(v) and 0 <= v <= SCORE_RANGE for v in values):
        raise ScoresFileError(f"record {record_id!r}: ok record without four raw scores in 0..{SCORE_RANGE:g}: "
                              "the published figures are computed from them")
    aggregation = aggregation or Aggregation()
    if aggregation.strategy != "weighted_geometric":
        return aggregate(Scores(*values), aggregation).overall
    s1, s2, n, a = values
    w1, w2, w3, w4 = aggregation.weights
    alpha = aggregation.alpha
    return (w1 * s1 / 2.5 + w2 * s2 / 2.5) ** alpha * (w3 * n / 2.5 + w4 * a / 2.5) ** (1 - alpha)


def index_ranked(scores: Sequence[float]) -> list[int]:
    """Strictly decreasing stand-ins for ``scores`` that keep the order of a
    stable sort (best first, ties in index order): ``n - position``."""
    stand_in = [0] * len(scores)
    for position, candidate in enumerate(predicted_order(scores)):
        stand_in[candidate] = len(scores) - position
    return stand_in


def group_metrics_published(scores: Sequence[float]) -> dict:
    """The ranked-group metrics as the published evaluation computes them: on
    the ranking of a stable sort, so tied candidates keep their index order
    (the experts' order). An all-tie group is an exact match, top-1 right,
    Kendall tau = Spearman rho = 1. The textbook NDCG is ours, not theirs."""
    metrics = group_metrics(index_ranked(scores))
    return {name: metrics[name] for name in PUBLISHED_GROUP_METRICS}


# -- pairs ---------------------------------------------------------------------

def pair_correct(better: float, worse: float) -> bool:
    """Right iff the human-preferred item scores strictly higher (a tie is wrong)."""
    return better > worse


# -- tallies -------------------------------------------------------------------

class Tally:
    """Counts for a set of units: judged, not judged (by reason), and the
    sum of each metric over judged units (None values, e.g. tau of a
    one-candidate group, are counted apart as undefined)."""

    def __init__(self) -> None:
        self.units = 0
        self.judged = 0
        self.not_judged: dict[str, int] = defaultdict(int)
        self.sums: dict[str, float] = defaultdict(float)
        self.defined: dict[str, int] = defaultdict(int)

    def add_not_judged(self, reason: str) -> None:
        self.units += 1
        self.not_judged[reason] += 1

    def add(self, values: dict) -> None:
        self.units += 1
        self.judged += 1
        for name, value in values.items():
            self.defined[name] += 0  # known, even when never defined
            if value is None:
                continue
            self.sums[name] += float(value)
            self.defined[name] += 1

    def result(self, accuracy_key: str | None = None) -> dict:
        """``{units, judged, not_judged, not_judged_by, METRIC: mean, ...}``.

        A metric's mean is over the judged units where it is defined (None when
        none is). ``accuracy_key`` names the metric whose lower bound counting
        not-judged units as wrong is reported as ``METRIC_all``."""
        out = {
            "units": self.units,
            "judged": self.judged,
            "not_judged": self.units - self.judged,
            "not_judged_by": dict(sorted(self.not_judged.items())),
        }
        for name in sorted(self.sums.keys() | self.defined.keys()):
            out[name] = self.sums[name] / self.defined[name] if self.defined[name] else None
            undefined = self.judged - self.defined[name]
            if undefined:
                out[f"{name}_undefined"] = undefined
        if accuracy_key is not None:
            out.setdefault(accuracy_key, None)
            out[f"{accuracy_key}_all"] = self.sums[accuracy_key] / self.units if self.units else None
        return out


def unweighted_mean(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (None when there is none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def competition_rank(values: Sequence[float], index: int) -> int:
    """1 + how many values are strictly higher than ``values[index]`` (ties share a rank)."""
    return 1 + sum(1 for v in values if v > values[index])
