"""Reading a results file, in one place for every command that reads one.

A valid results file (what ``judge`` and ``rescore`` write; docs/manifests-and-records.md "Record format"):

- UTF-8 JSON Lines: one JSON object per line, blank lines ignored, no NaN or
  Infinity;
- each object a record: a string ``id`` and ``status`` ``"ok"`` (with a
  ``reward`` in [0, 1], numbers for ``overall``, ``sc`` and ``pq``, and the four
  raw ``scores``) or ``"error"`` (with an ``error`` object);
- a text-to-image record (``"kind": "t2i"``, protocol ``t2i-spatial``; no
  ``kind`` is an edit) has, when ok, a ``reward`` in [0, 1], ``scores``
  ``spatial`` and ``presence`` in 0..25, null ``overall``/``sc``/``pq`` (edit
  metrics it does not have), ``objects`` and ``relations`` lists and a ``t2i``
  object (the reward's parts); see ``t2i_problem``;
- the candidates of a multi-candidate edit share ``group`` and are
  consecutive, ``group_size`` of them (the judge writes a group whole, ranked,
  in one write). A record without ``group`` stands alone.

``read_records`` streams the records of a file, validating each
(``record_problem``) and naming ``file:line`` for a bad one. ``walk_units``
walks a stream of records as *units*: a single record, or a whole group. Only
a run killed mid-write can leave an incomplete group (the last one; resuming
cuts it); a group interrupted by another record is walked as it is and marked
incomplete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from .aggregate import DIMENSIONS
from .constants import BBOX_RANGE, SCORE_RANGE
from .errors import ScoresFileError
from .numbers import is_number

T = TypeVar("T")


def read_records(path: Path | str) -> Iterator[dict]:
    """The records of the results file ``path``, one at a time.

    Raises ``ScoresFileError`` for a missing file, and for a line that is not
    JSON or not a valid record, naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise ScoresFileError(f"scores file {path}: no such file")
    seen: dict[bytes, int] = {}  # 8-byte id digest -> line
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
            except ValueError as exc:  # UnicodeDecodeError included
                torn = "" if line.endswith(b"\n") else (
                    "; a torn last line from an interrupted run: re-run the same `spatialreward judge ... -o` "
                    "command, which repairs the file and finishes the run")
                raise ScoresFileError(f"{path}:{number}: invalid JSON ({exc}){torn}") from None
            problem = record_problem(record)
            if problem:
                raise ScoresFileError(f"{path}:{number}: not a valid spatialreward record ({problem})")
            key = id_key(record["id"])
            if key in seen:
                raise ScoresFileError(
                    f"{path}:{number}: id {record['id']!r} already recorded on line {seen[key]} (two runs wrote "
                    "this file at once?): counting it twice would be wrong; judge again with --overwrite"
                )
            seen[key] = number
            yield record


def id_key(record_id: str) -> bytes:
    """A compact key for an id (8-byte digest): sets of them stay small for long files."""
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid number")


EDIT_KIND, T2I_KIND = "edit", "t2i"
T2I_SCORES = ("spatial", "presence")
DECIDED_BY = ("geometry", "model", "none")


def record_kind(record: dict) -> str:
    """``"t2i"`` for a text-to-image record (``"kind": "t2i"``), else ``"edit"``
    (edit records carry no ``kind``)."""
    return T2I_KIND if record.get("kind") == T2I_KIND else EDIT_KIND


def is_t2i(record: dict) -> bool:
    return record.get("kind") == T2I_KIND


def record_problem(record: Any) -> str | None:
    """Why ``record`` is not a valid record of a results file, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("id"), str):
        return "no 'id'"
    kind = record.get("kind", EDIT_KIND)
    if kind not in (EDIT_KIND, T2I_KIND):
        return f"kind must be 't2i' (or absent: an edit), not {kind!r}"
    status = record.get("status")
    if status == "ok" and kind == T2I_KIND:
        return t2i_problem(record)
    if status == "ok":
        if not is_number(record.get("reward")) or not 0 <= record["reward"] <= 1:
            return "ok record without a reward in [0, 1]"
        for key in ("overall", "sc", "pq"):
            if not is_number(record.get(key)):
                return f"ok record without a numeric {key!r}"
        scores = record.get("scores")
        if not isinstance(scores, dict) or not all(is_number(scores.get(d)) for d in DIMENSIONS):
            return "ok record without its four raw scores"
        return None
    if status == "error":
        return None if isinstance(record.get("error"), dict) else "error record without an 'error' object"
    return f"status must be 'ok' or 'error', not {status!r}"


def _is_bool_or_none(value) -> bool:
    return value is None or isinstance(value, bool)


def t2i_problem(record: dict) -> str | None:
    """Why an ok t2i record is not valid, or None: ``reward`` in [0, 1];
    ``scores`` with ``spatial`` and ``presence`` numbers in 0..25; ``overall``,
    ``sc`` and ``pq`` null (a t2i record has none: a number there would let an
    edit metric pass for it); ``objects`` a list of {label: string, bbox_2d:
    null or four numbers in 0..1000}; ``relations`` a list of {subject,
    relation, object: strings; model, geometry, agree: boolean or null;
    decided_by: geometry, model or none}; ``t2i`` an object whose
    ``verified_fraction`` is null or in [0, 1]."""
    if not is_number(record.get("reward")) or not 0 <= record["reward"] <= 1:
        return "ok t2i record without a reward in [0, 1]"
    for key in ("overall", "sc", "pq"):
        if record.get(key) is not None:
            return f"t2i record with an edit metric {key!r} (must be null)"
    scores = record.get("scores")
    if not isinstance(scores, dict) or not all(
            is_number(scores.get(name)) and 0 <= scores[name] <= SCORE_RANGE for name in T2I_SCORES):
        return f"ok t2i record without scores 'spatial' and 'presence' in 0..{SCORE_RANGE:g}"
    objects = record.get("objects")
    if not isinstance(objects, list):
        return "ok t2i record without an 'objects' list"
    for index, item in enumerate(objects):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            return f"t2i objects[{index}] is not an object with a string 'label'"
        box = item.get("bbox_2d")
        if box is not None and not (isinstance(box, list) and len(box) == 4
                                    and all(is_number(v) and 0 <= v <= BBOX_RANGE for v in box)):
            return f"t2i objects[{index}].bbox_2d is neither null nor four numbers in 0..{BBOX_RANGE}"
    relations = record.get("relations")
    if not isinstance(relations, list):
        return "ok t2i record without a 'relations' list"
    for index, item in enumerate(relations):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("subject", "relation", "object")):
            return f"t2i relations[{index}] is not an object with string subject, relation and object"
        if not all(_is_bool_or_none(item.get(k)) for k in ("model", "geometry", "agree")):
            return f"t2i relations[{index}]: model, geometry and agree must be true, false or null"
        if item.get("decided_by") not in DECIDED_BY:
            return f"t2i relations[{index}].decided_by must be one of {', '.join(DECIDED_BY)}"
    parts = record.get("t2i")
    if not isinstance(parts, dict):
        return "ok t2i record without its 't2i' object (the reward's parts)"
    fraction = parts.get("verified_fraction")
    if fraction is not None and not (is_number(fraction) and 0 <= fraction <= 1):
        return "t2i.verified_fraction must be null or in [0, 1]"
    return None


@dataclass
class Unit(Generic[T]):
    """A single record, or the consecutive records of one multi-candidate group."""

    items: list[T]
    group: Any = None  # the group's id; None for a single record
    group_size: int | None = None  # the size the group's first record states (None: single, or not stated)

    @property
    def complete(self) -> bool:
        """False only for a group with fewer records than its ``group_size``."""
        return self.group is None or self.group_size is None or len(self.items) >= self.group_size

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _size(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def walk_units(items: Iterable[T], key: Callable[[T], dict] | None = None) -> Iterator[Unit[T]]:
    """Walk ``items`` (records, or anything ``key`` maps to its record) as units.

    A record without ``group`` is a unit at once. A group's records are
    collected until it holds ``group_size`` of them, or until a record that is
    not of this group comes, or the items end (then it is incomplete). Lazy:
    each unit is yielded as soon as it is whole, without reading further."""
    pending: Unit[T] | None = None
    for item in items:
        record = item if key is None else key(item)
        group = record.get("group")
        if pending is not None and group != pending.group:
            yield pending
            pending = None
        if group is None:
            yield Unit([item])
            continue
        if pending is None:
            pending = Unit([], group, _size(record.get("group_size")))
        pending.items.append(item)
        if pending.group_size is not None and len(pending.items) >= pending.group_size:
            yield pending
            pending = None
    if pending is not None:
        yield pending
