"""Recompute rewards from stored raw scores, without any model.

The raw scores (0..25) are the model's; only the aggregation changes, so
weights can be tuned offline. ``judge_hash`` is kept and ``config_hash`` is
recomputed for the new aggregation; groups are re-ranked.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .aggregate import DIMENSIONS, Scores, aggregate
from .config import Aggregation, config_hash
from .errors import ScoresFileError
from .records import rank_group, reward_fields


def rescore_record(record: dict, aggregation: Aggregation) -> dict:
    out = dict(record)
    if record.get("status") == "ok":
        raw = record.get("scores") or {}
        values = [raw.get(d) for d in DIMENSIONS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 25 for v in values):
            raise ScoresFileError(f"record {record.get('id')!r}: ok record without four raw scores in 0..25")
        out.update(reward_fields(aggregate(Scores(*values), aggregation)))
    if record.get("judge_hash"):
        out["config_hash"] = config_hash(record["judge_hash"], aggregation)
    return out


def rescore(records: Iterable[dict], aggregation: Aggregation) -> Iterator[dict]:
    """Rescored records in input order; multi-candidate groups re-ranked."""
    group: list[dict] = []
    for record in records:
        new = rescore_record(record, aggregation)
        if group and new.get("group") != group[0].get("group"):
            yield from rank_group(group)
            group = []
        if new.get("group") is not None:
            group.append(new)
        else:
            yield new
    if group:
        yield from rank_group(group)
