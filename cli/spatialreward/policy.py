"""What a trainer gets for an item that could not be judged: one home for the failure policy.

Every door that hands a flat list of rewards to training code (the client's
``evaluate``, the trainer adapters, the server's ``on_error`` field and
``POST /compute``) applies one of these, chosen by the caller:

| policy | a failed item's reward | for |
|---|---|---|
| ``none`` | ``None`` | code that checks each reward (the released client's shape) |
| ``nan`` | ``float("nan")`` | code that masks NaN before its advantage step (``torch.isnan``) |
| ``raise`` | no value: ``ItemsFailed`` names the failed items | code that would rather stop |
| ``neutral`` | the mean reward of the valid items of its group (same instruction and source images; the whole batch when no group is known) | group-advantage trainers: the item's advantage is zero, so the policy learns nothing from a judgment that was never made |

``neutral`` never invents a number out of nothing: a group with no valid item
takes the batch's valid mean (its items all get the same value, so their
group advantage is still zero); a batch with no valid item at all has no
neutral value and raises ``ItemsFailed``. Under every policy the failed items
are reported (``PolicyOutcome.failed``), never hidden; no policy gives 0.0 or a
midpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Sequence

POLICIES = ("none", "nan", "raise", "neutral")


class ItemsFailed(Exception):
    """``on_error="raise"`` (or ``neutral`` with no valid item in the batch):
    the indexes of the failed items and why each failed."""

    def __init__(self, message: str, failed: Sequence[int], errors: Sequence | None = None):
        super().__init__(message)
        self.failed = list(failed)
        self.errors = list(errors) if errors is not None else []


@dataclass
class PolicyOutcome:
    """The values a trainer gets (one per item, in order), and which items failed."""

    values: list
    failed: list[int] = field(default_factory=list)
    policy: str = "none"
    neutral: dict[int, float] = field(default_factory=dict)  # neutral: the value each failed item was given

    def report(self) -> dict:
        """What a response or metadata carries about the failures."""
        return {"on_error": self.policy, "failed": list(self.failed), "failed_count": len(self.failed)}


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"on_error must be one of {', '.join(POLICIES)}; got {policy!r}")
    return policy


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def apply_policy(values: Sequence[float | None], policy: str, *, groups: Sequence[Hashable] | None = None,
                 errors: Sequence | None = None, what: str = "reward") -> PolicyOutcome:
    """``values[i]`` is None (or NaN) for a failed item. Returns the list a
    trainer gets under ``policy`` and the failed indexes; ``raise`` raises
    ``ItemsFailed`` when an item failed. ``groups[i]`` (any hashable) names
    item i's group for ``neutral``; without it the batch is one group."""
    check_policy(policy)
    values = list(values)
    failed = [i for i, value in enumerate(values) if is_missing(value)]
    if not failed:
        return PolicyOutcome([float(v) for v in values], [], policy)
    if policy == "raise" or (policy == "neutral" and len(failed) == len(values)):
        why = "" if policy == "raise" else f"on_error=neutral has no valid {what} to take a mean of: "
        detail = _first_errors(failed, errors)
        raise ItemsFailed(f"{why}{len(failed)} of {len(values)} items could not be judged (items "
                          f"{_indexes(failed)}){detail}", failed, [errors[i] for i in failed] if errors else None)
    if policy == "none":
        return PolicyOutcome([None if is_missing(v) else float(v) for v in values], failed, policy)
    if policy == "nan":
        return PolicyOutcome([math.nan if is_missing(v) else float(v) for v in values], failed, policy)
    # neutral
    if groups is not None and len(groups) != len(values):
        raise ValueError(f"{len(groups)} group keys for {len(values)} items")
    valid = [float(v) for v in values if not is_missing(v)]
    batch_mean = sum(valid) / len(valid)
    sums: dict = {}
    if groups is not None:
        for value, group in zip(values, groups):
            if not is_missing(value):
                total, count = sums.get(group, (0.0, 0))
                sums[group] = (total + float(value), count + 1)
    out, given = [], {}
    for i, value in enumerate(values):
        if not is_missing(value):
            out.append(float(value))
            continue
        total, count = sums.get(groups[i], (0.0, 0)) if groups is not None else (0.0, 0)
        given[i] = total / count if count else batch_mean
        out.append(given[i])
    return PolicyOutcome(out, failed, policy, given)


def _indexes(failed: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in failed[:limit])
    return shown + (f", ... {len(failed) - limit} more" if len(failed) > limit else "")


def _first_errors(failed: Sequence[int], errors: Sequence | None) -> str:
    if not errors:
        return ""
    first = errors[failed[0]]
    if isinstance(first, dict):
        first = f"{first.get('stage')}: {first.get('message')}"
    return f"; item {failed[0]}: {first}" if first else ""
