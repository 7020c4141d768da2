"""Summary statistics of a results file, and their terminal table.

Streams the records once; keeps one float per judged edit per dimension (in
compact arrays), nothing else.

The metrics depend on the kind of records (``summary["kind"]``):

- ``"edit"`` (edit records, and an empty file): reward, overall, sc, pq and
  the four raw scores (``METRICS``);
- ``"t2i"`` (text-to-image records, protocol ``t2i-spatial``): reward, the raw
  scores spatial and presence (0..25) and ``verified_fraction`` (the share of
  box-decidable relations that hold; over the records where some relation was
  decidable) (``T2I_METRICS``), and ``summary["relations"]``: how many
  relations were judged, how many each of geometry / the model / nothing
  decided, and how often the model's verdict and the geometry's agree where
  both are known;
- ``"mixed"`` (a file holding both, which a judge run never writes): every
  metric, each over the records that have it, reward over all, and
  ``summary["kinds"]`` counting the records of each kind.
"""

from __future__ import annotations

import math
from array import array
from pathlib import Path
from typing import Iterable

from .aggregate import DIMENSIONS
from .results import EDIT_KIND, T2I_KIND, T2I_SCORES, read_records, record_kind

METRICS = ("reward", "overall", "sc", "pq") + DIMENSIONS
T2I_METRICS = ("reward",) + T2I_SCORES + ("verified_fraction",)
EDIT_ONLY_METRICS = tuple(m for m in METRICS if m not in T2I_METRICS)
MIXED_METRICS = METRICS + tuple(m for m in T2I_METRICS if m not in METRICS)
STAGES = ("input", "model", "parse")
MIXED_KIND = "mixed"


def metrics_of(kind: str) -> tuple[str, ...]:
    """The metrics a summary of records of ``kind`` (edit, t2i, mixed) shows."""
    return {T2I_KIND: T2I_METRICS, MIXED_KIND: MIXED_METRICS}.get(kind, METRICS)


def metric_digits(metric: str) -> int:
    return 3 if metric in ("reward", "verified_fraction") else 2


class _Relations:
    """Counts over t2i records' relation verdicts."""

    def __init__(self) -> None:
        self.judged = self.compared = self.agreed = 0
        self.decided_by = {"geometry": 0, "model": 0, "none": 0}

    def add(self, relations) -> None:
        for relation in relations or ():
            self.judged += 1
            decided = relation.get("decided_by")
            self.decided_by[decided if decided in self.decided_by else "none"] += 1
            agree = relation.get("agree")
            if isinstance(agree, bool):
                self.compared += 1
                self.agreed += agree

    def result(self) -> dict:
        return {
            "judged": self.judged,
            "decided_by": dict(self.decided_by),
            "compared": self.compared,  # relations where both the model and the geometry gave a verdict
            "agreed": self.agreed,
            "agreement_rate": self.agreed / self.compared if self.compared else None,
        }


def quantile(sorted_values, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    n = len(sorted_values)
    pos = (n - 1) * q
    low = math.floor(pos)
    high = min(low + 1, n - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


class _Bucket:
    def __init__(self) -> None:
        self.total = self.ok = self.repaired = self.passed = 0
        self.errors = {stage: 0 for stage in STAGES}
        self.values = {metric: array("d") for metric in MIXED_METRICS}
        self.kinds = {EDIT_KIND: 0, T2I_KIND: 0}
        self.relations = _Relations()

    def add(self, record: dict, threshold: float) -> None:
        self.total += 1
        kind = record_kind(record)
        self.kinds[kind] += 1
        if record.get("status") != "ok":
            stage = (record.get("error") or {}).get("stage", "unknown")
            self.errors[stage] = self.errors.get(stage, 0) + 1
            return
        self.ok += 1
        self.repaired += bool(record.get("repaired"))
        self.passed += record["reward"] >= threshold
        self.values["reward"].append(record["reward"])
        if kind == T2I_KIND:
            for name in T2I_SCORES:
                self.values[name].append(record["scores"][name])
            fraction = (record.get("t2i") or {}).get("verified_fraction")
            if fraction is not None:  # None: no relation was decidable by boxes
                self.values["verified_fraction"].append(fraction)
            self.relations.add(record.get("relations"))
            return
        for metric in ("overall", "sc", "pq"):
            self.values[metric].append(record[metric])
        for dim in DIMENSIONS:
            self.values[dim].append(record["scores"][dim])

    @property
    def kind(self) -> str:
        """edit, t2i or mixed (an empty bucket: edit)."""
        if self.kinds[T2I_KIND] and self.kinds[EDIT_KIND]:
            return MIXED_KIND
        return T2I_KIND if self.kinds[T2I_KIND] else EDIT_KIND

    def result(self, kind: str | None = None) -> dict:
        """The bucket's summary, with the metrics of ``kind`` (default: its own)."""
        kind = kind or self.kind
        stats = {}
        for metric in metrics_of(kind):
            ordered = sorted(self.values[metric])
            stats[metric] = (
                {
                    "mean": sum(ordered) / len(ordered),
                    "median": quantile(ordered, 0.5),
                    "p10": quantile(ordered, 0.1),
                    "p90": quantile(ordered, 0.9),
                    "min": ordered[0],
                    "max": ordered[-1],
                }
                if ordered
                else None
            )
        result = {
            "kind": kind,
            "total": self.total,
            "ok": self.ok,
            "error": sum(self.errors.values()),
            "errors_by_stage": dict(self.errors),
            "repaired": self.repaired,
            "passed": self.passed,
            "pass_rate": self.passed / self.ok if self.ok else None,
            "stats": stats,
        }
        if kind != EDIT_KIND:
            result["relations"] = self.relations.result()
        if kind == MIXED_KIND:
            result["kinds"] = dict(self.kinds)
        return result


class SummaryBuilder:
    """Accumulates records one at a time; ``result()`` gives the summary dict."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.overall = _Bucket()
        self.categories: dict[str, _Bucket] = {}
        self.config_hashes: set[str] = set()

    def add(self, record: dict) -> None:
        self.overall.add(record, self.threshold)
        if record.get("config_hash"):
            self.config_hashes.add(record["config_hash"])
        category = (record.get("meta") or {}).get("category")
        if isinstance(category, str):
            self.categories.setdefault(category, _Bucket()).add(record, self.threshold)

    def result(self) -> dict:
        kind = self.overall.kind
        summary = {"threshold": self.threshold, **self.overall.result(kind)}
        hashes = sorted(self.config_hashes)
        summary["config_hash"] = hashes[0] if len(hashes) == 1 else hashes
        if self.categories:
            summary["categories"] = {name: b.result(kind) for name, b in sorted(self.categories.items())}
        return summary


def summarize(records: Iterable[dict], threshold: float) -> dict:
    """Counts, mean/median/p10/p90 of reward and each dimension (the metrics of
    the records' kind: see the module docstring), pass rate at ``threshold``
    (share of judged items with reward >= threshold), overall and per
    ``meta.category`` when present."""
    builder = SummaryBuilder(threshold)
    for record in records:
        builder.add(record)
    return builder.result()


def summarize_file(path: Path | str, threshold: float) -> dict:
    """``summarize`` of the results file ``path`` (``ScoresFileError`` if it is missing or bad)."""
    return summarize(read_records(path), threshold)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def judged_line(summary: dict, noun: str | None = None) -> str | None:
    """"2 of 9 judged: 7 errors": how much of the run a pass rate or mean
    stands for, shown beside them whenever some records are errors (None when
    every record was judged). ``noun``: "edits", "images" ..., or none."""
    errors = summary.get("error") or 0
    if not errors:
        return None
    what = f" {noun}" if noun else ""
    return f"{summary['ok']} of {summary['total']}{what} judged: {errors} error{'s' if errors != 1 else ''}"


def render_table(summary: dict) -> str:
    """A plain-text table for the terminal."""
    lines = []
    errors = summary["errors_by_stage"]
    kind = summary.get("kind", EDIT_KIND)
    noun = {T2I_KIND: "images", MIXED_KIND: "records"}.get(kind, "edits")
    if kind == MIXED_KIND:
        kinds = summary.get("kinds") or {}
        lines.append(f"warning: a mixed file: {kinds.get(EDIT_KIND, 0)} edit records and {kinds.get(T2I_KIND, 0)} "
                     "text-to-image (t2i) records; their rewards are not comparable")
    lines.append(
        f"{noun} {summary['total']}  ok {summary['ok']}  error {summary['error']} "
        f"(input {errors.get('input', 0)}, model {errors.get('model', 0)}, parse {errors.get('parse', 0)})  "
        f"repaired {summary['repaired']}"
    )
    rate = summary["pass_rate"]
    judged = judged_line(summary, noun)
    lines.append(
        f"pass rate at reward >= {summary['threshold']:g}: "
        + ("-" if rate is None else f"{rate:.1%} ({summary['passed']}/{summary['ok']})")
        + (f"; only {judged} (not in the pass rate nor the means)" if judged else "")
    )
    metrics = metrics_of(kind)
    width = max(12, *(len(m) for m in metrics))
    header = f"{'metric':<{width}} {'mean':>8} {'median':>8} {'p10':>8} {'p90':>8}"
    lines += ["", header, "-" * len(header)]
    for metric in metrics:
        stats = summary["stats"].get(metric)
        digits = metric_digits(metric)
        if stats is None:
            lines.append(f"{metric:<{width}} {'-':>8} {'-':>8} {'-':>8} {'-':>8}")
        else:
            lines.append(
                f"{metric:<{width}} {_fmt(stats['mean'], digits):>8} {_fmt(stats['median'], digits):>8} "
                f"{_fmt(stats['p10'], digits):>8} {_fmt(stats['p90'], digits):>8}"
            )
    if summary.get("relations"):
        lines += ["", relations_line(summary["relations"])]
    if summary.get("categories"):
        header = f"{'category':<20} {noun:>6} {'ok':>5} {'error':>6} {'mean reward':>12} {'pass rate':>10}"
        lines += ["", header, "-" * len(header)]
        for name, cat in summary["categories"].items():
            reward = cat["stats"]["reward"]
            rate = cat["pass_rate"]
            lines.append(
                f"{name[:20]:<20} {cat['total']:>6} {cat['ok']:>5} {cat['error']:>6} "
                f"{_fmt(reward and reward['mean']):>12} {('-' if rate is None else f'{rate:.1%}'):>10}"
            )
    return "\n".join(lines)


def relations_line(relations: dict) -> str:
    """One line on a t2i summary's relations: how many were judged, who
    decided them, and how often the model and the geometry agree."""
    decided = relations.get("decided_by") or {}
    rate = relations.get("agreement_rate")
    agreement = ("-" if rate is None else f"{rate:.1%}") + f" ({relations.get('agreed', 0)}/{relations.get('compared', 0)})"
    return (f"relations {relations.get('judged', 0)} judged: {decided.get('geometry', 0)} decided by geometry, "
            f"{decided.get('model', 0)} by the model alone, {decided.get('none', 0)} undecided; "
            f"model/geometry agreement {agreement}")
