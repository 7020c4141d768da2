"""Recompute rewards from stored raw scores, without any model.

The raw scores (0..25) are the model's; only the aggregation changes, so
weights can be tuned offline. ``judge_hash`` is kept and ``config_hash`` is
recomputed for the new aggregation; groups are re-ranked.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .aggregate import DIMENSIONS, Scores, aggregate
from .config import Aggregation, config_hash
from .constants import SCORE_RANGE
from .errors import ScoresFileError
from .numbers import is_number
from .records import rank_group, reward_fields
from .results import walk_units


def rescore_record(record: dict, aggregation: Aggregation) -> dict:
    out = dict(record)
    if record.get("status") == "ok":
        raw = record.get("scores") or {}
        values = [raw.get(d) for d in DIMENSIONS]
        if not all(is_number(v) and 0 <= v <= SCORE_RANGE for v in values):
            raise ScoresFileError(
                f"record {record.get('id')!r}: ok record without four raw scores in 0..{SCORE_RANGE:g}")
        out.update(reward_fields(aggregate(Scores(*values), aggregation)))
    if record.get("judge_hash"):
        out["config_hash"] = config_hash(record["judge_hash"], aggregation)
    return out


def rescore(records: Iterable[dict], aggregation: Aggregation) -> Iterator[dict]:
    """Rescored records in input order; multi-candidate groups re-ranked."""
    for unit in walk_units(rescore_record(record, aggregation) for record in records):
        yield from (unit.items if unit.group is None else rank_group(unit.items))
