"""The JSON record written for each edit (documented in docs/manifests-and-records.md, "Record format")."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from .aggregate import DIMENSIONS, Reward, Scores

if TYPE_CHECKING:  # judge imports this module; only the annotation needs judge
    from .judge import JudgeResult

RECORD_VERSION = 1


def _path(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (list, tuple)):  # several source images
        return [_path(v) for v in value]
    return f"<{value.__class__.__name__}>"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def reward_fields(reward: Reward | None) -> dict:
    if reward is None:
        return {"reward": None, "overall": None, "sc": None, "pq": None}
    return {
        "reward": _round(reward.reward),
        "overall": _round(reward.overall),
        "sc": _round(reward.sc),
        "pq": _round(reward.pq),
    }


def pixel_box(bbox_2d, size: tuple[int, int] | None) -> list[int] | None:
    """0..1000 normalised coordinates -> pixel coordinates of the edited image."""
    if size is None:
        return None
    width, height = size
    x1, y1, x2, y2 = bbox_2d
    return [round(x1 * width / 1000), round(y1 * height / 1000), round(x2 * width / 1000), round(y2 * height / 1000)]


def build_record(result: JudgeResult, *, model: str, judge_hash: str, config_hash: str) -> dict:
    sample = result.sample
    record = {
        "id": sample.id,
        "source": _path(sample.source),
        "edited": _path(sample.edited),
        "instruction": sample.instruction,
        "meta": sample.meta,
        "status": result.status,
        "error": result.error.to_dict() if result.error else None,
        **reward_fields(result.reward),
        "scores": result.scores.to_dict() if result.scores else None,
        "regions": None,
        "reasoning": None,
        "raw": None,
        "repaired": result.repaired,
    }
    if result.error and sample.origin:
        record["error"]["origin"] = sample.origin
    if result.kind == "t2i":
        _t2i_fields(record, result)
    if result.sc:
        first_sc = result.sc[0]
        record["regions"] = [
            {**region.to_dict(), "bbox_px": pixel_box(region.bbox_2d, result.edited_size)}
            for region in first_sc.answer.regions
        ]
    if result.sc and result.pq:
        record["reasoning"] = {"sc": result.sc[0].answer.reasoning, "pq": result.pq[0].answer.reasoning}
    if result.sc or result.pq:
        record["raw"] = {
            "sc": result.sc[0].raw if result.sc else None,
            "pq": result.pq[0].raw if result.pq else None,
        }
        failed = {k: j[0].failed_raw for k, j in (("sc", result.sc), ("pq", result.pq)) if j and j[0].failed_raw}
        if failed:
            record["raw_failed"] = failed
    notes = parse_notes(result)
    if notes:
        record["parse_notes"] = notes
    passes = result.pass_scores()
    if len(passes) > 1 and result.ok:
        record["passes"] = [s.to_dict() for s in passes]
        record["spread"] = spread(passes)
    if sample.group is not None:
        record.update(group=sample.group, group_size=sample.group_size, candidate=sample.candidate, rank=None)
    record.update(
        edited_size=list(result.edited_size) if result.edited_size else None,
        model=model,
        judge_hash=judge_hash,
        config_hash=config_hash,
        version=RECORD_VERSION,
    )
    return record


def _t2i_fields(record: dict, result: "JudgeResult") -> None:
    """A t2i-spatial record: ``kind`` "t2i", the image in ``edited`` (``source``
    null), the prompt in ``instruction``; ``scores`` {spatial, presence};
    ``objects`` (label, bbox_2d on 0..1000, bbox_px), ``relations`` (the
    model's and the geometry's verdicts), ``t2i`` (the reward's parts)."""
    record["kind"] = "t2i"
    record["scores"] = ({k: _round(v) for k, v in result.t2i_scores.items()} if result.t2i_scores else None)
    record["objects"] = None
    record["relations"] = None
    record["t2i"] = None
    if result.t2i:
        answer = result.t2i[0].answer
        record["objects"] = [{"label": o.label, "bbox_2d": None if o.bbox_2d is None else list(o.bbox_2d),
                              "bbox_px": None if o.bbox_2d is None else pixel_box(o.bbox_2d, result.edited_size)}
                             for o in answer.objects]
        record["reasoning"] = {"t2i": answer.reasoning}
        record["raw"] = {"t2i": result.t2i[0].raw}
        if result.t2i[0].failed_raw:
            record["raw_failed"] = {"t2i": result.t2i[0].failed_raw}
    if result.verdicts is not None:
        record["relations"] = result.verdicts
    if result.t2i_parts is not None:
        record["t2i"] = {k: _round(v) if isinstance(v, float) else v for k, v in result.t2i_parts.items()}


def parse_notes(result: "JudgeResult") -> list[str]:
    """What parsing tolerated in the answers behind this record ("sc: score
    given as strings"; "sc pass 2: ..." with several passes): nothing silent."""
    several = max(len(result.sc), len(result.pq), len(result.t2i)) > 1
    notes = []
    for kind, judgments in (("sc", result.sc), ("pq", result.pq), ("t2i", result.t2i)):
        for index, judgment in enumerate(judgments):
            where = f"{kind} pass {index + 1}" if several else kind
            notes.extend(f"{where}: {note}" for note in getattr(judgment.answer, "notes", ()))
    return notes


def spread(passes: list[Scores]) -> dict:
    out = {}
    for dim in DIMENSIONS:
        values = [getattr(s, dim) for s in passes]
        out[dim] = {"std": _round(statistics.pstdev(values)), "min": min(values), "max": max(values)}
    return out


def rank_group(records: list[dict]) -> list[dict]:
    """Rank a multi-candidate group by reward, best = 1; ties share the best
    rank (1, 2, 2, 4); error records get rank null."""
    ok = sorted((r["reward"] for r in records if r["status"] == "ok"), reverse=True)
    for record in records:
        record["rank"] = ok.index(record["reward"]) + 1 if record["status"] == "ok" else None
    return records
