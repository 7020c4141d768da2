"""What the text-to-image benches share (``spatial-pairs``, ``geneval-position``):
reading a local JSON Lines file, checking its schema before any model loads,
the t2i samples, relation types, and reading the records back.

A data file is UTF-8 JSON Lines, one object per line (blank lines ignored);
image paths are relative to the file (or absolute). Every row is checked
before anything is judged: a missing file, a line that is not a JSON object, a
row without a required column, or a value of the wrong type is one error
(``BenchDataError``, exit 3) naming the file, the lines and the columns. An
image file that cannot be read is not a schema error: its item becomes an
error record and its unit is counted as not judged.

Each distinct (image, prompt, relations) is one sample, judged once under
``--protocol t2i-spatial``: its id is a digest of the three, so the same image
in two rows (or on both sides of a pair) is one judgment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ScoresFileError
from ..results import read_records
from ..sample import Sample
from ..t2i import canonical_relation
from .data import BenchDataError

NO_TYPE = "(not given)"  # the breakdown key of a unit that names no relation
_KEEP = ("id", "status", "reward", "scores", "kind", "relations", "t2i", "error", "judge_hash", "config_hash")
_SHOWN = 3  # bad rows named in one error message


def read_rows(path: str | Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every row of the JSONL file ``path``; raises
    ``BenchDataError`` (one line) when the file is missing or unreadable, a line
    is not a JSON object, or a row lacks one of the ``required`` columns."""
    file = Path(path).expanduser()
    columns = ", ".join(required)
    if not file.is_file():
        raise BenchDataError(f"{path}: no such file (expected a JSONL file of {what} rows: {columns})")
    rows, missing, bad = [], [], []
    try:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    bad.append(number)
                    continue
                if not isinstance(row, dict):
                    bad.append(number)
                    continue
                lacking = [c for c in required if c not in row or row[c] is None]
                if lacking:
                    missing.append((number, lacking))
                rows.append((number, row))
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchDataError(f"{path}: cannot read ({exc})") from None
    if bad:
        raise BenchDataError(f"{path}: schema error: line {_lines(bad)} is not a JSON object "
                             f"(each line is one {what} row: {columns})")
    if missing:
        shown = "; ".join(f"line {n} lacks {', '.join(repr(c) for c in cols)}" for n, cols in missing[:_SHOWN])
        more = f" (and {len(missing) - _SHOWN} more rows)" if len(missing) > _SHOWN else ""
        raise BenchDataError(f"{path}: schema error: each row needs the columns {columns}: {shown}{more}")
    if not rows:
        raise BenchDataError(f"{path}: no rows (expected a JSONL file of {what} rows: {columns})")
    return rows


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_SHOWN])
    return shown + (f" (and {len(numbers) - _SHOWN} more)" if len(numbers) > _SHOWN else "")


class RowProblems:
    """Collects wrong-typed values over the rows; raises them as one schema error."""

    def __init__(self, path) -> None:
        self.path = path
        self.found: list[str] = []

    def add(self, number: int, problem: str) -> None:
        self.found.append(f"line {number}: {problem}")

    def raise_any(self) -> None:
        if self.found:
            more = f" (and {len(self.found) - _SHOWN} more)" if len(self.found) > _SHOWN else ""
            raise BenchDataError(f"{self.path}: schema error: {'; '.join(self.found[:_SHOWN])}{more}")


def check_text(problems: RowProblems, number: int, row: dict, column: str) -> None:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        problems.add(number, f"{column!r} must be a non-empty string, not {json.dumps(value)[:40]}")


def check_relations(problems: RowProblems, number: int, row: dict, column: str = "relations") -> None:
    value = row.get(column)
    if value is None:
        return
    if not isinstance(value, list) or not all(
            isinstance(r, list) and len(r) == 3 and all(isinstance(p, str) and p.strip() for p in r) for r in value):
        problems.add(number, f"{column!r} must be a list of [subject, relation, object] strings")


def row_id(number: int, row: dict, problems: RowProblems, seen: dict) -> str:
    """The row's ``id`` (a string or integer), else ``line-N``; unique in the file."""
    raw = row.get("id")
    if raw is None:
        value = f"line-{number}"
    elif isinstance(raw, (str, int)) and not isinstance(raw, bool) and str(raw):
        value = str(raw)
    else:
        problems.add(number, "'id' must be a non-empty string or integer")
        return f"line-{number}"
    if value in seen:
        problems.add(number, f"id {value!r} already used on line {seen[value]}")
    seen[value] = number
    return value


def sample_id(image: str, prompt: str, relations) -> str:
    """An id naming what is judged: the image path as written (normalised), the
    prompt and the relations checked."""
    text = json.dumps([os.path.normpath(image), prompt, relations], ensure_ascii=False)
    return "t2i-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_t2i_sample(base: Path, image: str, prompt: str, relations, origin: str, bench: str) -> Sample:
    """A text-to-image sample (no source image) for ``--protocol t2i-spatial``;
    the relations to check travel in ``meta`` as the judge reads them."""
    path = Path(image).expanduser()
    meta = {"benchmark": bench}
    if relations is not None:
        meta["relations"] = relations
    return Sample(id=sample_id(image, prompt, relations), source=None,
                  edited=str(path if path.is_absolute() else base / path), instruction=prompt.strip(),
                  meta=meta, origin=origin)


def relation_types(relations=None, relation=None) -> list[str]:
    """The distinct canonical relation types a unit states, sorted:
    ``relation`` (a wording, or one [subject, relation, object]) when given,
    else each of ``relations``; ``[NO_TYPE]`` when none."""
    if isinstance(relation, str) and relation.strip():
        found = {canonical_relation(relation)}
    elif isinstance(relation, list) and len(relation) == 3 and isinstance(relation[1], str):
        found = {canonical_relation(relation[1])}
    else:
        found = {canonical_relation(r[1]) for r in relations or []}
    return sorted(found) or [NO_TYPE]


def load_records(scores: Path) -> dict[str, dict]:
    """``{id: record}`` of a t2i results file (read and checked by
    ``results.read_records``), with the fields the t2i benches need (the
    relations' verdicts included). An ok edit record is refused: it was
    judged under another protocol."""
    out: dict[str, dict] = {}
    for record in read_records(scores):
        if record.get("status") == "ok" and record.get("kind") != "t2i":
            raise ScoresFileError(f"{scores}: record {record['id']!r} is an edit record, not a t2i-spatial one "
                                  "(judged under another protocol)")
        out[record["id"]] = {k: record.get(k) for k in _KEEP}
    return out


def prepare(bench, source: str, folder: Path, *, limit: int | None):
    """Read and check ``source`` (every row, before anything is written or
    loaded), then write ``items.jsonl`` and ``bench.json`` under ``folder`` as
    the other benches do; the ``Prepared`` samples and units."""
    from .run import INFO, ITEMS, _write_jsonl

    path = Path(source).expanduser()
    rows = read_rows(path, bench.COLUMNS, bench.ROW)
    prepared = bench.prepare_rows(rows, path.resolve().parent, str(source), limit)
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / ITEMS, prepared.items)
    info = {"benchmark": bench.NAME, "data": str(source), "limit": limit, "items": len(prepared.items),
            "samples": len(prepared.samples), "protocol": "t2i-spatial", **prepared.notes}
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return prepared
