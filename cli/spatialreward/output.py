"""The JSONL results file: append-only writing that survives SIGKILL, and resume.

Each write is one ``os.write`` of complete lines (a multi-candidate group is
written whole, once ranked), so a killed run leaves at most one torn last
line. On resume the file is scanned once: a torn last line or an incomplete
trailing group is cut off, records from another config are refused, and the
ids already recorded are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .constants import IMAGE_EXTENSIONS
from .errors import OutputConflictError, OutputIsInputError
from .results import id_key, walk_units


@dataclass
class ResumeState:
    done: set[bytes] = field(default_factory=set)
    kept: int = 0  # records already in the file
    repaired_tail: bool = False  # a torn line or incomplete group was cut off
    dropped: int = 0  # records removed for --retry-errors (errors and their groups)


def _scan(path: Path, config_hash: str) -> tuple[int, int, int]:
    """(bytes of complete content, records kept, byte offset of a trailing incomplete group or -1)."""
    good_end = kept = 0
    last = None
    for unit in walk_units(_lines(path, config_hash), key=lambda line: line[2]):
        good_end = unit.items[-1][1]
        kept += len(unit)
        last = unit
    incomplete = last.items[0][0] if last is not None and not last.complete else -1
    return good_end, kept, incomplete


def _lines(path: Path, config_hash: str) -> Iterator[tuple[int, int, dict]]:
    """(start offset, end offset, record) of each complete line of ``path``,
    up to a torn last line; refuses a bad line before the last one and
    another config's record."""
    with path.open("rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                record = None
            if not isinstance(record, dict) or "id" not in record:
                if handle.read(1):
                    raise OutputConflictError(
                        f"{path}:{number}: not a spatialreward record; fix the file, or use --overwrite or another -o"
                    )
                return  # torn last line
            if record.get("config_hash") != config_hash:
                raise OutputConflictError(
                    f"{path}:{number}: recorded under config {record.get('config_hash')!r}, this run is "
                    f"{config_hash!r} (different model, prompts, decoding or aggregation): use --overwrite to "
                    "start fresh or write to another -o"
                )
            yield start, offset, record


def prepare(path: Path, config_hash: str, *, overwrite: bool, retry_errors: bool) -> ResumeState:
    """Make ``path`` ready to append to and return what it already holds."""
    state = ResumeState()
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return state
    size = path.stat().st_size
    good_end, kept, incomplete = _scan(path, config_hash)
    cut = incomplete if incomplete >= 0 else good_end
    if cut < size:
        with path.open("r+b") as handle:
            handle.truncate(cut)
        state.repaired_tail = True
    if retry_errors:
        state.dropped = _drop_errors(path)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            record = json.loads(line)
            key = id_key(record["id"])
            if key in state.done:
                raise OutputConflictError(
                    f"{path}:{number}: id {record['id']!r} is recorded twice (two runs wrote this file at once?): "
                    "use --overwrite to start fresh or write to another -o"
                )
            state.done.add(key)
            state.kept += 1
    return state


def _drop_errors(path: Path) -> int:
    """Rewrite ``path`` without error records (and without any group holding
    one, so the group is re-judged and re-ranked whole)."""
    tmp = path.with_name(path.name + ".tmp")
    dropped = 0
    with path.open("rb") as src, tmp.open("wb") as dst:
        for unit in walk_units(((line, json.loads(line)) for line in src), key=lambda item: item[1]):
            if any(record["status"] != "ok" for _, record in unit):
                dropped += len(unit)
            else:
                dst.write(b"".join(line for line, _ in unit))
    os.replace(tmp, path)
    return dropped


class RecordWriter:
    """Appends records as JSON lines, each batch with a single ``os.write``."""

    def __init__(self, path: Path | None):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def write(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records).encode("utf-8")
        if self._fd is None:
            import sys

            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
            return
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def summary_path(output: Path) -> Path:
    """``scores.jsonl`` -> ``scores.summary.json`` next to it."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.summary.json")


def lock_path(output: Path) -> Path:
    """The lock file beside a results file: ``.NAME.lock`` (left in place; empty)."""
    return output.with_name(f".{output.name}.lock")


# Locks this process holds: lock file -> [FileLock, owning thread, depth]. A
# command holds its outputs for its whole run and may call code that takes the
# same lock again (``bench`` -> ``runner.run``): that nests; any other holder,
# another process or another thread of this one, is refused.
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


def _conflict(flag: str, path: Path) -> OutputConflictError:
    return OutputConflictError(
        f"{path}: another spatialreward run is writing this file; wait for it to finish or write to another {flag}")


def _acquire(flag: str, path: Path) -> str:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock_path(Path(os.path.realpath(path))))  # one lock whatever the spelling (links, relative paths)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held[1] != me:
                raise _conflict(flag, path)
            held[2] += 1
            return key
        lock = FileLock(key, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise _conflict(flag, path) from None
        _HELD[key] = [lock, me, 1]
        return key


def _release(key: str) -> None:
    with _HELD_GUARD:
        held = _HELD[key]
        held[2] -= 1
        if held[2] == 0:
            del _HELD[key]
            held[0].release()


@contextlib.contextmanager
def exclusive(*outputs: Path | str | tuple[str, Path | str | None] | None):
    """Hold output files for one run; every command that creates, truncates or
    rewrites a results file, a summary or a report takes this lock first.

    Each output is a path, or ``(flag, path)`` as for ``refuse_overwriting``
    (the flag goes into the message; a bare path is ``-o``); ``None`` is
    skipped. The lock is ``.NAME.lock`` beside each file (``lock_path``), held
    until the block ends. A file another run holds (another process, or
    another thread of this one) is refused at once with ``OutputConflictError``
    naming it (exit 3), before anything is written; the locks already taken are
    let go. Nested use by the same thread re-enters."""
    with contextlib.ExitStack() as stack:
        for output in outputs:
            flag, path = output if isinstance(output, tuple) else ("-o", output)
            if path is None:
                continue
            stack.callback(_release, _acquire(flag, Path(path)))
        yield


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a whole new file to; renamed
    over ``path`` when the block completes, removed when it fails: readers see
    the old file or the new one, never part of one, and a failed run leaves the
    old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a killed run
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) as the whole of ``path``, through ``replacing``."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def refuse_overwriting(outputs, inputs) -> None:
    """Refuse before anything is written when an output (``(flag, path)``) is
    one of the inputs (``(what, path)``), or a results file (flag ``-o``) is
    named like an image."""
    def same(a: Path, b: Path) -> bool:
        a, b = a.expanduser().absolute(), b.expanduser().absolute()
        if a.resolve() == b.resolve():
            return True
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False

    for flag, out in outputs:
        if out is None:
            continue
        out = Path(out)
        if flag == "-o" and out.suffix.lower() in IMAGE_EXTENSIONS:
            raise OutputIsInputError(f"-o {out}: a results file named like an image; use a .jsonl name")
        for what, given in inputs:
            if given is None or str(given) == "-":
                continue
            if same(out, Path(given)):
                raise OutputIsInputError(f"{flag} {out} is the {what}: writing it would destroy it; choose another path")
