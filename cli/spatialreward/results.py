"""Reading a results file, in one place for every command that reads one.

A valid results file (what ``judge`` and ``rescore`` write; README "Record format"):

- UTF-8 JSON Lines: one JSON object per line, blank lines ignored, no NaN or
  Infinity;
- each object a record: a string ``id`` and ``status`` ``"ok"`` (with a
  ``reward`` in [0, 1], numbers for ``overall``, ``sc`` and ``pq``, and the four
  raw ``scores``) or ``"error"`` (with an ``error`` object);
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


def record_problem(record: Any) -> str | None:
    """Why ``record`` is not a valid record of a results file, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("id"), str):
        return "no 'id'"
    status = record.get("status")
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
