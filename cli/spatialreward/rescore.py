"""Recompute rewards from stored raw scores, without any model.

The raw scores (0..25) are the model's; only the aggregation changes, so
weights can be tuned offline. ``judge_hash`` is kept and ``config_hash`` is
recomputed for the new aggregation; groups are re-ranked.

Text-to-image records (``"kind": "t2i"``, protocol ``t2i-spatial``) are
re-scored with the t2i reward formula (``spatialreward.t2i.t2i_reward_parts``)
and the given ``T2IWeights`` (config key ``t2i``) from what the record stores:
``scores.spatial``/``scores.presence`` and each relation's ``geometry``
verdict (and ``canonical`` name, for ``missing_box_fails``). Nothing is
re-judged or invented: the geometry verdicts stay the judge's. Their
``reward`` and ``t2i`` parts are replaced; ``overall``/``sc``/``pq`` stay
null. The edit ``Aggregation`` does not apply to them (only to the
fingerprint, as the judge computes it).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable, Iterator, Sequence

from .aggregate import DIMENSIONS, Scores, aggregate
from .config import Aggregation, config_hash
from .constants import SCORE_RANGE
from .errors import ScoresFileError
from .numbers import is_number
from .records import rank_group, reward_fields
from .results import is_t2i, walk_units
from .t2i import T2IWeights, canonical_relation, t2i_reward_parts


def t2i_parts_from_scores(spatial: float, presence: float, relations: Sequence[dict],
                          weights: T2IWeights) -> dict:
    """The t2i reward and its parts from stored values: the two raw scores
    (0..25) and the relations' verdicts as a record stores them (``geometry``
    true/false/null, ``canonical``). The judge's own formula
    (``t2i_reward_parts``) on a minimal answer holding only the scores; a
    relation without a ``canonical`` name gets it from its ``relation``
    wording. Raises ``ValueError`` for scores that are not numbers in 0..25."""
    verdicts = []
    for relation in relations:
        canonical = relation.get("canonical")
        if not isinstance(canonical, str):
            canonical = canonical_relation(relation.get("relation") or "")
        verdicts.append({"geometry": relation.get("geometry"), "canonical": canonical})
    return t2i_reward_parts(SimpleNamespace(spatial=spatial, presence=presence), verdicts, weights)


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def rescore_t2i_record(record: dict, aggregation: Aggregation, weights: T2IWeights) -> dict:
    out = dict(record)
    if record.get("status") == "ok":
        raw = record.get("scores") or {}
        spatial, presence = raw.get("spatial"), raw.get("presence")
        relations = record.get("relations")
        if not all(is_number(v) and 0 <= v <= SCORE_RANGE for v in (spatial, presence)):
            raise ScoresFileError(
                f"record {record.get('id')!r}: ok t2i record without scores spatial and presence in 0..{SCORE_RANGE:g}")
        if not isinstance(relations, list) or not all(isinstance(r, dict) for r in relations):
            raise ScoresFileError(f"record {record.get('id')!r}: ok t2i record without its relations' verdicts")
        parts = t2i_parts_from_scores(spatial, presence, relations, weights)
        out["t2i"] = {key: _round(value) for key, value in parts.items()}
        out["reward"] = round(parts["reward"], 6)
    if record.get("judge_hash"):
        out["config_hash"] = config_hash(record["judge_hash"], aggregation, weights)
    return out


def rescore_record(record: dict, aggregation: Aggregation, t2i_weights: T2IWeights | None = None) -> dict:
    """``record`` re-scored: an edit record with ``aggregation``, a t2i record
    with ``t2i_weights`` (default ``T2IWeights()``)."""
    if is_t2i(record):
        return rescore_t2i_record(record, aggregation, t2i_weights or T2IWeights())
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


def rescore(records: Iterable[dict], aggregation: Aggregation,
            t2i_weights: T2IWeights | None = None) -> Iterator[dict]:
    """Rescored records in input order; multi-candidate groups re-ranked."""
    for unit in walk_units(rescore_record(record, aggregation, t2i_weights) for record in records):
        yield from (unit.items if unit.group is None else rank_group(unit.items))
