"""Gate a judged run on reward thresholds, and against a baseline run.

Checks (each optional except ``max_errors``, default 0): minimum mean reward,
minimum pass rate (share of judged edits with reward >= ``pass_threshold``),
minimum mean of each raw dimension (0..25), maximum error records, minimum
number of judged edits; the same per ``meta.category``.

Text-to-image records (``"kind": "t2i"``, protocol ``t2i-spatial``) are gated
the same way on their reward (mean, pass rate), errors and count; their raw
scores are ``spatial`` and ``presence`` (``min_dimension_mean``, 0..25). A
criterion on a metric the records do not have (an edit dimension such as
``success`` over t2i records, ``spatial`` over edit records) is a usage error
(``ConfigError``, exit 2) naming the metric, never a silent pass or fail; so is
a baseline of the other kind.

Baseline rule (``--baseline``): edits are paired by id where both runs judged
them (status ok). d = reward(run) - reward(baseline) per pair; the mean d and a
seeded percentile-bootstrap confidence interval of the mean (``confidence``,
default 95 %, ``bootstrap`` resamples) are reported. The gate fails when the
interval's upper bound is below ``-max_drop`` (a non-inferiority margin): even
the best mean change the interval allows is a larger drop than the tolerated
one, so the run is worse by more than ``max_drop`` and that is not noise. A
drop within ``max_drop`` passes, however certain; with ``max_drop`` 0 any drop
whose interval excludes 0 fails. Unpaired ids are counted and listed, never
dropped silently.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .aggregate import DIMENSIONS
from .constants import SCORE_RANGE
from .errors import ConfigError, ScoresFileError
from .numbers import is_number
from .results import EDIT_KIND, T2I_KIND, T2I_SCORES, read_records, record_kind
from .summary import MIXED_KIND, SummaryBuilder

GATE_DIMENSIONS = DIMENSIONS + T2I_SCORES  # edit records' raw scores, then t2i records'
KIND_DIMENSIONS = {EDIT_KIND: DIMENSIONS, T2I_KIND: T2I_SCORES, MIXED_KIND: GATE_DIMENSIONS}
KIND_NAMES = {EDIT_KIND: "edit records", T2I_KIND: "text-to-image (t2i) records"}

THRESHOLD_KEYS = ("min_mean_reward", "min_pass_rate", "min_dimension_mean", "max_errors", "min_judged")
GATE_KEYS = THRESHOLD_KEYS + ("pass_threshold", "categories", "max_drop", "confidence", "bootstrap", "seed")


@dataclass
class GateConfig:
    min_mean_reward: float | None = None
    min_pass_rate: float | None = None
    pass_threshold: float = 0.5
    min_dimension_mean: dict = field(default_factory=dict)  # dimension -> minimum mean (0..25)
    max_errors: int | None = 0
    min_judged: int | None = 1  # no judged edit is no pass
    categories: dict = field(default_factory=dict)  # category -> {threshold keys}
    max_drop: float = 0.0
    confidence: float = 0.95
    bootstrap: int = 2000
    seed: int = 0

    def validate(self) -> "GateConfig":
        for name in ("min_mean_reward", "min_pass_rate", "pass_threshold", "max_drop"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and 0 <= value <= 1):
                raise ConfigError(f"gate: {name} must be a number in [0, 1], not {value!r}")
        for name in ("max_errors", "min_judged"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"gate: {name} must be an integer >= 0, not {value!r}")
        _check_dimensions(self.min_dimension_mean, "min_dimension_mean")
        if not (is_number(self.confidence) and 0 < self.confidence < 1):
            raise ConfigError(f"gate: confidence must be in (0, 1), not {self.confidence!r}")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 100:
            raise ConfigError(f"gate: bootstrap must be an integer >= 100, not {self.bootstrap!r}")
        for name, limits in self.categories.items():
            if not isinstance(limits, dict):
                raise ConfigError(f"gate: categories.{name} must be a mapping of thresholds")
            unknown = set(limits) - set(THRESHOLD_KEYS)
            if unknown:
                raise ConfigError(f"gate: unknown key categories.{name}.{sorted(unknown)[0]} (known: {', '.join(THRESHOLD_KEYS)})")
            _check_dimensions(limits.get("min_dimension_mean") or {}, f"categories.{name}.min_dimension_mean")
        return self


def _check_dimensions(mapping, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"gate: {where} must map dimensions to minimum means")
    for dim, value in mapping.items():
        if dim in ("overall", "sc", "pq"):
            raise ConfigError(f"gate: {where}: {dim!r} is not a raw dimension but an edit record's 0..10 aggregate "
                              "(text-to-image records have none); gate on the reward, or on a raw dimension (edit "
                              f"records {', '.join(DIMENSIONS)}; t2i records {', '.join(T2I_SCORES)})")
        if dim not in GATE_DIMENSIONS:
            raise ConfigError(f"gate: {where}: unknown dimension {dim!r} (known: edit records "
                              f"{', '.join(DIMENSIONS)}; t2i records {', '.join(T2I_SCORES)})")
        if not (is_number(value) and 0 <= value <= SCORE_RANGE):
            raise ConfigError(f"gate: {where}.{dim} must be a number in 0..{SCORE_RANGE:g}, not {value!r}")


def load_gate_config(path: str | Path | None, overrides: dict) -> GateConfig:
    """Gate thresholds from a YAML file (keys as ``GateConfig``), then flags."""
    tree: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read gate file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a gate file must be a YAML mapping")
        tree = dict(loaded or {})
        unknown = set(tree) - set(GATE_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown gate key {sorted(unknown)[0]!r} (known: {', '.join(GATE_KEYS)})")
    for key, value in overrides.items():
        if key == "min_dimension_mean":
            tree["min_dimension_mean"] = {**(tree.get("min_dimension_mean") or {}), **value}
        else:
            tree[key] = value
    return GateConfig(**tree).validate()


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "mean reward"
    scope: str  # "all" or "category X"
    observed: float | None
    limit: float
    kind: str  # ">=" or "<="

    @property
    def passed(self) -> bool:
        if self.observed is None:
            return False
        return self.observed >= self.limit if self.kind == ">=" else self.observed <= self.limit


@dataclass
class Comparison:
    paired: int
    mean_delta: float | None
    ci_low: float | None
    ci_high: float | None
    wins: int
    ties: int
    losses: int
    only_run: list[str]
    only_baseline: list[str]
    not_ok: list[str]  # ids present in both but not judged ok in one of them
    max_drop: float
    confidence: float
    regression: bool  # the rule in the module docstring


@dataclass
class GateResult:
    summary: dict
    checks: list[Check]
    comparison: Comparison | None
    worst: list[dict]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not (self.comparison and self.comparison.regression)


def _scope_checks(stats: dict, limits: dict, scope: str) -> list[Check]:
    checks = []
    reward = stats["stats"]["reward"]
    if limits.get("min_mean_reward") is not None:
        checks.append(Check("mean reward", scope, reward and reward["mean"], limits["min_mean_reward"], ">="))
    if limits.get("min_pass_rate") is not None:
        checks.append(Check("pass rate", scope, stats["pass_rate"], limits["min_pass_rate"], ">="))
    for dim, minimum in (limits.get("min_dimension_mean") or {}).items():
        dim_stats = stats["stats"][dim]
        checks.append(Check(f"mean {dim}", scope, dim_stats and dim_stats["mean"], minimum, ">="))
    if limits.get("max_errors") is not None:
        checks.append(Check("errors", scope, stats["error"], limits["max_errors"], "<="))
    if limits.get("min_judged") is not None:
        checks.append(Check(judged_name(stats.get("kind")), scope, stats["ok"], limits["min_judged"], ">="))
    return checks


def judged_name(kind: str | None) -> str:
    return "judged images" if kind == T2I_KIND else "judged edits"


def check_metrics_apply(config: GateConfig, kind: str, scores: Path) -> None:
    """A usage error (``ConfigError``) for a criterion on a metric the records
    of ``kind`` do not have: e.g. ``min_dimension_mean.success`` (an edit
    metric) over t2i records."""
    known = KIND_DIMENSIONS.get(kind, DIMENSIONS)
    scopes = [("min_dimension_mean", config.min_dimension_mean)] + [
        (f"categories.{name}.min_dimension_mean", limits.get("min_dimension_mean") or {})
        for name, limits in sorted(config.categories.items())]
    for where, mapping in scopes:
        for dim in mapping:
            if dim not in known:
                other = "an edit metric" if dim in DIMENSIONS else "a text-to-image (t2i) metric"
                raise ConfigError(
                    f"gate: {where}.{dim}: {dim!r} is {other}, but {scores} holds {KIND_NAMES.get(kind, kind)}, "
                    f"which have no {dim!r} (their raw scores: {', '.join(known)}); gate them on reward, pass rate "
                    f"or {', '.join(known)}")


def _reward_map(path: Path) -> tuple[dict[str, float | None], set[str], set[str]]:
    rewards: dict[str, float | None] = {}
    hashes: set[str] = set()
    kinds: set[str] = set()
    for record in read_records(path):
        rewards[record["id"]] = record["reward"] if record.get("status") == "ok" else None
        kinds.add(record_kind(record))
        if record.get("config_hash"):
            hashes.add(record["config_hash"])
    return rewards, hashes, kinds


def bootstrap_ci(deltas, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``deltas`` (seeded)."""
    import numpy as np

    values = np.asarray(deltas, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(1, len(values)))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def compare(run: Path, baseline: Path, config: GateConfig, *, allow_config_mismatch: bool,
            run_hashes: set[str], run_kind: str | None = None) -> Comparison:
    base, base_hashes, base_kinds = _reward_map(baseline)
    base_kind = MIXED_KIND if len(base_kinds) > 1 else next(iter(base_kinds), None)
    if run_kind is not None and base_kind is not None and base_kind != run_kind:
        raise ConfigError(f"gate: the run holds {KIND_NAMES.get(run_kind, run_kind)} and the baseline "
                          f"{KIND_NAMES.get(base_kind, base_kind)}: their rewards measure different things and "
                          "cannot be paired")
    if not allow_config_mismatch and base_hashes and run_hashes and base_hashes != run_hashes:
        raise ScoresFileError(
            f"config hash of the run ({', '.join(sorted(run_hashes))}) differs from the baseline's "
            f"({', '.join(sorted(base_hashes))}): they were judged with another model, prompts, decoding or "
            "aggregation; rescore one of them, or pass --allow-config-mismatch"
        )
    deltas = array("d")
    wins = ties = losses = 0
    only_run: list[str] = []
    not_ok: list[str] = []
    seen: set[str] = set()
    for record in read_records(run):
        rid = record["id"]
        if rid not in base:
            only_run.append(rid)
            continue
        seen.add(rid)
        if record.get("status") != "ok" or base[rid] is None:
            not_ok.append(rid)
            continue
        delta = record["reward"] - base[rid]
        deltas.append(delta)
        if abs(delta) < 1e-9:
            ties += 1
        elif delta > 0:
            wins += 1
        else:
            losses += 1
    only_baseline = [rid for rid in base if rid not in seen]
    mean = low = high = None
    regression = False
    if deltas:
        mean = sum(deltas) / len(deltas)
        low, high = bootstrap_ci(deltas, config.confidence, config.bootstrap, config.seed)
        regression = high < -config.max_drop
    return Comparison(
        paired=len(deltas), mean_delta=mean, ci_low=low, ci_high=high, wins=wins, ties=ties, losses=losses,
        only_run=only_run, only_baseline=only_baseline, not_ok=not_ok, max_drop=config.max_drop,
        confidence=config.confidence, regression=regression,
    )


def run_gate(scores: Path, config: GateConfig, *, baseline: Path | None = None,
             allow_config_mismatch: bool = False, worst: int = 5) -> GateResult:
    """Evaluate every check on ``scores`` (streamed) and compare with ``baseline``."""
    import heapq

    builder = SummaryBuilder(config.pass_threshold)
    hashes: set[str] = set()
    counter = 0
    heap: list = []
    for record in read_records(scores):
        builder.add(record)
        if record.get("config_hash"):
            hashes.add(record["config_hash"])
        if record.get("status") == "ok":
            counter += 1
            item = (-record["reward"], counter, {k: record.get(k) for k in ("id", "reward", "instruction", "edited", "meta")})
            if len(heap) < worst:
                heapq.heappush(heap, item)
            elif worst:
                heapq.heappushpop(heap, item)
    summary = builder.result()
    if summary["total"] == 0:
        raise ScoresFileError(f"{scores}: no records: nothing was judged, so there is nothing to gate "
                              "(did the judge write to another file?)")
    if len(hashes) > 1:
        raise ScoresFileError(f"{scores}: records from {len(hashes)} different configs ({', '.join(sorted(hashes))})")
    check_metrics_apply(config, summary["kind"], scores)
    checks = _scope_checks(summary, vars(config), "all")
    for name, limits in sorted(config.categories.items()):
        stats = (summary.get("categories") or {}).get(name)
        if stats is None:
            checks.append(Check(judged_name(summary["kind"]), f"category {name}", 0,
                                max(1, limits.get("min_judged") or 1), ">="))
            continue
        checks.extend(_scope_checks(stats, limits, f"category {name}"))
    comparison = None
    if baseline is not None:
        comparison = compare(scores, baseline, config, allow_config_mismatch=allow_config_mismatch, run_hashes=hashes,
                             run_kind=summary["kind"])
    worst_records = [item[2] for item in sorted(heap, key=lambda x: (-x[0], x[1]))]
    return GateResult(summary=summary, checks=checks, comparison=comparison, worst=worst_records)
