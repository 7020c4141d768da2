"""What every benchmark module shares: the sample builder, looking up a unit's
records, and the Markdown helpers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..sample import Sample


@dataclass
class Prepared:
    """A benchmark's rows turned into samples to judge and units to score."""

    samples: list[Sample]
    items: list[dict]  # one per benchmark unit (group / pair), with the sample ids it needs
    notes: dict = field(default_factory=dict)  # counts worth reporting (e.g. multi-source rows)


def split_rows(splits: dict, limit: int | None):
    """(split, index, origin, row) for the first ``limit`` rows of each split
    (all with None); ``origin`` ("2pair[7]") names the row in messages."""
    for split, rows in splits.items():
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                break
            yield split, index, f"{split}[{index}]", row


def content_id(prefix: str, source: str | list[str] | None, edited: str | None, instruction: Any) -> str:
    """An id naming what is judged: the same source(s), edit and instruction in
    two rows is one sample, judged once. ``source``: one path, or the list of an
    edit's sources in order (one source gives the id it always had)."""
    if isinstance(source, list) and len(source) == 1:
        source = source[0]
    if isinstance(source, list):
        source_name = json.dumps([Path(s).name for s in source])
    else:
        source_name = Path(source).name if source else ""
    text = "\n".join([source_name, Path(edited).name if edited else "", str(instruction)])
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def make_sample(sample_id: str, source: str | None, edited: str | None, instruction: Any, meta: dict,
                origin: str, **group) -> Sample:
    sample = Sample(id=sample_id, source=source, edited=edited,
                    instruction=instruction if isinstance(instruction, str) else "", meta=meta, origin=origin,
                    **group)
    if not isinstance(instruction, str) or not instruction.strip():
        sample.error = InputError(f"{origin}: empty instruction")
    elif source is None:
        sample.error = InputError(f"{origin}: no source image")
    elif edited is None:
        sample.error = InputError(f"{origin}: no edited image")
    return sample


def store_path(store, value) -> str | None:
    return None if value is None else store.path(value)


def unit_values(ids: list[str], records: dict[str, dict], value: Callable[[dict], float]):
    """``(values, None)`` when every record is ok, else ``(None, reason)``:
    ``error`` when one is an error record, ``missing`` when one was never
    written (an interrupted run, or --limit changed)."""
    found = [records.get(i) for i in ids]
    if any(r is not None and r.get("status") != "ok" for r in found):
        return None, "error"
    if any(r is None for r in found):
        return None, "missing"
    return [value(r) for r in found], None


def fmt(value, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def coverage_line(block: dict) -> str:
    """"judged 98 of 100 units; not judged 2 (error 1, missing 1)"."""
    line = f"judged {block['judged']} of {block['units']} units"
    if block["not_judged"]:
        reasons = ", ".join(f"{k} {v}" for k, v in block["not_judged_by"].items())
        line += f"; not judged {block['not_judged']} ({reasons}): never counted right"
    return line
