"""Summary statistics of a results file, and their terminal table.

Streams the records once; keeps one float per judged edit per dimension (in
compact arrays), nothing else.
"""

from __future__ import annotations

import math
from array import array
from pathlib import Path
from typing import Iterable

from .aggregate import DIMENSIONS
from .results import read_records

METRICS = ("reward", "overall", "sc", "pq") + DIMENSIONS
STAGES = ("input", "model", "parse")


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
        self.values = {metric: array("d") for metric in METRICS}

    def add(self, record: dict, threshold: float) -> None:
        self.total += 1
        if record.get("status") != "ok":
            stage = (record.get("error") or {}).get("stage", "unknown")
            self.errors[stage] = self.errors.get(stage, 0) + 1
            return
        self.ok += 1
        self.repaired += bool(record.get("repaired"))
        self.passed += record["reward"] >= threshold
        for metric in ("reward", "overall", "sc", "pq"):
            self.values[metric].append(record[metric])
        for dim in DIMENSIONS:
            self.values[dim].append(record["scores"][dim])

    def result(self) -> dict:
        stats = {}
        for metric, values in self.values.items():
            ordered = sorted(values)
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
        return {
            "total": self.total,
            "ok": self.ok,
            "error": sum(self.errors.values()),
            "errors_by_stage": dict(self.errors),
            "repaired": self.repaired,
            "passed": self.passed,
            "pass_rate": self.passed / self.ok if self.ok else None,
            "stats": stats,
        }


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
        summary = {"threshold": self.threshold, **self.overall.result()}
        hashes = sorted(self.config_hashes)
        summary["config_hash"] = hashes[0] if len(hashes) == 1 else hashes
        if self.categories:
            summary["categories"] = {name: b.result() for name, b in sorted(self.categories.items())}
        return summary


def summarize(records: Iterable[dict], threshold: float) -> dict:
    """Counts, mean/median/p10/p90 of reward and each dimension, pass rate at
    ``threshold`` (share of judged edits with reward >= threshold), overall and
    per ``meta.category`` when present."""
    builder = SummaryBuilder(threshold)
    for record in records:
        builder.add(record)
    return builder.result()


def summarize_file(path: Path | str, threshold: float) -> dict:
    """``summarize`` of the results file ``path`` (``ScoresFileError`` if it is missing or bad)."""
    return summarize(read_records(path), threshold)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(summary: dict) -> str:
    """A plain-text table for the terminal."""
    lines = []
    errors = summary["errors_by_stage"]
    lines.append(
        f"edits {summary['total']}  ok {summary['ok']}  error {summary['error']} "
        f"(input {errors.get('input', 0)}, model {errors.get('model', 0)}, parse {errors.get('parse', 0)})  "
        f"repaired {summary['repaired']}"
    )
    rate = summary["pass_rate"]
    lines.append(
        f"pass rate at reward >= {summary['threshold']:g}: "
        + ("-" if rate is None else f"{rate:.1%} ({summary['passed']}/{summary['ok']})")
    )
    header = f"{'metric':<12} {'mean':>8} {'median':>8} {'p10':>8} {'p90':>8}"
    lines += ["", header, "-" * len(header)]
    for metric in METRICS:
        stats = summary["stats"][metric]
        digits = 3 if metric == "reward" else 2
        if stats is None:
            lines.append(f"{metric:<12} {'-':>8} {'-':>8} {'-':>8} {'-':>8}")
        else:
            lines.append(
                f"{metric:<12} {_fmt(stats['mean'], digits):>8} {_fmt(stats['median'], digits):>8} "
                f"{_fmt(stats['p10'], digits):>8} {_fmt(stats['p90'], digits):>8}"
            )
    if summary.get("categories"):
        header = f"{'category':<20} {'edits':>6} {'ok':>5} {'error':>6} {'mean reward':>12} {'pass rate':>10}"
        lines += ["", header, "-" * len(header)]
        for name, cat in summary["categories"].items():
            reward = cat["stats"]["reward"]
            rate = cat["pass_rate"]
            lines.append(
                f"{name[:20]:<20} {cat['total']:>6} {cat['ok']:>5} {cat['error']:>6} "
                f"{_fmt(reward and reward['mean']):>12} {('-' if rate is None else f'{rate:.1%}'):>10}"
            )
    return "\n".join(lines)
