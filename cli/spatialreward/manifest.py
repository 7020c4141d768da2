"""Read edits from a JSONL manifest, a folder, or stdin, one at a time.

Every problem with one line becomes a ``Sample`` carrying an ``InputError``
that names the file and line; the other lines are still read. Only a manifest
that cannot be opened at all raises ``ManifestError``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path
from typing import IO, Iterator

from .constants import IMAGE_EXTENSIONS, MAX_SOURCES
from .errors import InputError, ManifestError
from .sample import Sample

# Bytes that are not UTF-8, as read with errors="surrogateescape".
_SURROGATES = re.compile("[\udc80-\udcff]")

INSTRUCTION_KEYS = ("instruction", "prompt")
SOURCE_KEYS = ("source", "input_image")
EDITED_KEYS = ("edited", "output_image", "output_images", "image")  # "image": a text-to-image row (no source)
ID_KEYS = ("id",)
FOLDER_NAME_KEYS = ("name", "id")


def read_manifest(spec: str | Path, *, edited_dir: str | Path | None = None) -> Iterator[Sample]:
    """Samples from ``spec``: a JSONL file, a folder, or ``-`` for stdin.

    Multi-candidate lines (``edited`` a list) expand into one sample per
    candidate sharing a ``group``. Duplicate ids are reported as input errors.
    """
    if str(spec) == "-":
        if edited_dir is not None:
            raise ManifestError("--edited-dir needs a folder manifest, not stdin")
        buffer = getattr(sys.stdin, "buffer", None)  # None: already text (a test's StringIO)
        stdin = io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape") if buffer else sys.stdin
        samples = _read_jsonl(stdin, "<stdin>", Path.cwd())
    else:
        path = Path(spec).expanduser().absolute()
        if path.is_dir():
            edited_root = Path(edited_dir).expanduser().absolute() if edited_dir else path / "edited"
            _check_folder(path, edited_root)
            samples = _read_folder(path, edited_root)
        elif path.is_file():
            if edited_dir is not None:
                raise ManifestError("--edited-dir needs a folder manifest (DIR/source, DIR/edited, DIR/instructions.jsonl)")
            samples = _read_jsonl_file(path, name=str(spec))
        else:
            raise ManifestError(f"manifest {path}: no such file or folder")
    return _dedupe(samples)


def _read_jsonl_file(path: Path, name: str) -> Iterator[Sample]:
    try:
        handle = path.open("r", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ManifestError(f"manifest {name}: cannot open ({exc.strerror or exc})") from None
    with handle:
        yield from _read_jsonl(handle, name, path.parent)


def _json_objects(handle: IO[str], name: str) -> Iterator[tuple[int, str, dict | Sample]]:
    """(line number, origin, object) for each non-blank line; a line that is not
    a JSON object gives an error Sample in place of the object."""
    for number, line in enumerate(handle, start=1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as some editors write
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        if _SURROGATES.search(line):
            yield number, origin, _bad(f"line-{number}", origin, "not valid UTF-8 text (save the manifest as UTF-8)")
            continue
        try:
            # Without its line break: a line cut short is reported where it ends
            # (column N of this line), not at "line 2 column 1" of a one-line text.
            entry = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield number, origin, _bad(f"line-{number}", origin, f"invalid JSON: {_json_problem(exc)}")
            continue
        if not isinstance(entry, dict):
            yield number, origin, _bad(f"line-{number}", origin, "a manifest line must be a JSON object")
            continue
        yield number, origin, entry


def _json_problem(exc: json.JSONDecodeError) -> str:
    """"Expecting ',' delimiter (column 12)"; "Unterminated string starting at column 9"."""
    if exc.msg.endswith(" at"):
        return f"{exc.msg} column {exc.colno}"
    return f"{exc.msg} (column {exc.colno})"


def _read_jsonl(handle: IO[str], name: str, base: Path) -> Iterator[Sample]:
    for number, origin, entry in _json_objects(handle, name):
        if isinstance(entry, Sample):
            yield entry
        else:
            yield from _entry_samples(entry, origin, base, number)


def _bad(sample_id: str, origin: str, message: str, **fields) -> Sample:
    sample = Sample(id=sample_id, source=fields.pop("source", None), edited=fields.pop("edited", None),
                    instruction=fields.pop("instruction", None), origin=origin, **fields)
    sample.error = InputError(f"{origin}: {message}")
    return sample


def _first(entry: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in entry:
            return key, entry[key]
    return None, None


def _resolve(value, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))


def _known_paths(value, base: Path, most: int):
    """``value`` resolved when it is a usable path, or a list of 1..``most``
    paths (one: that path); else None."""
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= most or not all(isinstance(v, str) and v for v in values):
        return None
    resolved = [_resolve(v, base) for v in values]
    return resolved[0] if len(resolved) == 1 else resolved


def _derived_id(source, edited, instruction) -> str:
    text = json.dumps([source, edited, instruction], ensure_ascii=False)
    return "e-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _entry_samples(entry: dict, origin: str, base: Path, number: int) -> Iterator[Sample]:
    id_key, raw_id = _first(entry, ID_KEYS)
    instr_key, instruction = _first(entry, INSTRUCTION_KEYS)
    src_key, source = _first(entry, SOURCE_KEYS)
    ed_key, edited = _first(entry, EDITED_KEYS)
    meta = {k: v for k, v in entry.items() if k not in {id_key, instr_key, src_key, ed_key}}
    sample_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id) else None
    fallback_id = sample_id or f"line-{number}"

    problem = None
    t2i = source is None and ed_key == "image"  # {"prompt", "image"}: text-to-image (--protocol t2i-spatial)
    if raw_id is not None and sample_id is None:
        problem = "'id' must be a non-empty string or integer"
    elif source is None and not t2i:
        problem = "missing field 'source' (or 'input_image')"
    elif edited is None:
        problem = "missing field 'edited' (or 'output_image' / 'output_images')"
    elif instruction is None:
        problem = "missing field 'prompt'" if t2i else "missing field 'instruction' (or 'prompt')"
    elif not isinstance(instruction, str) or not instruction.strip():
        problem = "empty instruction" if isinstance(instruction, str) else "'instruction' must be a string"
    sources = source if isinstance(source, list) else [source]
    if t2i:
        sources = []
    elif problem is None and not 1 <= len(sources) <= MAX_SOURCES:
        problem = f"'{src_key}' lists {len(sources)} source images; an edit takes 1 to {MAX_SOURCES}"
    if problem is None and not all(isinstance(s, str) and s for s in sources):
        problem = f"'{src_key}' must be a path or a list of paths"
    candidates = edited if isinstance(edited, list) else [edited]
    if problem is None and (not candidates or not all(isinstance(c, str) and c for c in candidates)):
        problem = f"'{ed_key}' must be a path or a non-empty list of paths"
    if problem is not None:
        # The paths that are known stay on the error record: the report shows its images beside the problem.
        yield _bad(fallback_id, origin, problem, meta=meta,
                   instruction=instruction if isinstance(instruction, str) else None,
                   source=None if t2i else _known_paths(source, base, MAX_SOURCES),
                   edited=_known_paths(edited, base, 1))
        return

    resolved_sources = [_resolve(s, base) for s in sources]
    source = None if t2i else resolved_sources[0] if len(resolved_sources) == 1 else resolved_sources
    resolved = [_resolve(c, base) for c in candidates]
    sample_id = sample_id or _derived_id(source, resolved if isinstance(edited, list) else resolved[0], instruction)
    yield from _expand(sample_id, source, resolved, isinstance(edited, list), instruction.strip(), meta, origin)


def _expand(sample_id, source, edited: list[str], grouped: bool, instruction, meta, origin) -> Iterator[Sample]:
    if not grouped:
        yield Sample(id=sample_id, source=source, edited=edited[0], instruction=instruction, meta=meta, origin=origin)
        return
    for k, path in enumerate(edited):
        yield Sample(
            id=f"{sample_id}#{k}", source=source, edited=path, instruction=instruction, meta=meta, origin=origin,
            group=sample_id, group_size=len(edited), candidate=k,
        )


def _find_image(folder: Path, name: str) -> tuple[Path | None, str | None]:
    found = [folder / f"{name}{ext}" for ext in IMAGE_EXTENSIONS if (folder / f"{name}{ext}").is_file()]
    if len(found) > 1:
        return None, f"several images named {name}.* in {folder}"
    return (found[0], None) if found else (None, None)


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by file name (other files ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _find_sources(folder: Path, name: str) -> tuple[str | list[str] | None, str | None]:
    """The source image(s) of ``name`` in a folder manifest: ``source/NAME.*`` (one
    source, a path), else the images in ``source/NAME/`` in file-name order (several,
    a list; one image there is one source, a path), or (None, the problem)."""
    single, problem = _find_image(folder, name)
    if problem:
        return None, problem
    if single is not None:
        return str(single), None
    images = _images_in(folder / name)
    if not images:
        return None, f"no source image {folder / name}.* nor images in {folder / name}/"
    if len(images) > MAX_SOURCES:
        return None, f"{len(images)} source images in {folder / name}/; an edit takes 1 to {MAX_SOURCES}"
    return (str(images[0]) if len(images) == 1 else [str(p) for p in images]), None


def _check_folder(root: Path, edited_root: Path) -> None:
    """Fail at once (before any model loads) when the folder layout is wrong."""
    if not (root / "instructions.jsonl").is_file():
        raise ManifestError(
            f"folder manifest {root}: missing instructions.jsonl (one line per edit: "
            '{"name": NAME, "instruction": "..."}, images in source/NAME.* and edited/NAME.*)'
        )
    if not edited_root.is_dir():
        raise ManifestError(f"folder manifest {root}: edited folder {edited_root} does not exist")


def _read_folder(root: Path, edited_root: Path) -> Iterator[Sample]:
    instructions = root / "instructions.jsonl"
    with instructions.open("r", encoding="utf-8", errors="surrogateescape") as handle:
        for number, origin, entry in _json_objects(handle, str(instructions)):
            if isinstance(entry, Sample):
                yield entry
                continue
            name_key, name = _first(entry, FOLDER_NAME_KEYS)
            instr_key, instruction = _first(entry, INSTRUCTION_KEYS)
            meta = {k: v for k, v in entry.items() if k not in {name_key, instr_key}}
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                yield _bad(f"line-{number}", origin, "missing or invalid 'name' (the image file stem)", meta=meta)
                continue
            if not isinstance(instruction, str) or not instruction.strip():
                # The images that are there stay on the error record (the report shows them).
                known_edited, _ = _find_image(edited_root, name)
                yield _bad(name, origin, "missing or empty 'instruction'", meta=meta,
                           instruction=instruction if isinstance(instruction, str) else None,
                           source=_find_sources(root / "source", name)[0],
                           edited=str(known_edited) if known_edited else None)
                continue
            source, problem = _find_sources(root / "source", name)
            if source is None:
                yield _bad(name, origin, problem, meta=meta, instruction=instruction)
                continue
            edited, problem = _find_image(edited_root, name)
            if problem:
                yield _bad(name, origin, problem, meta=meta, instruction=instruction, source=source)
                continue
            if edited is not None:
                yield from _expand(name, source, [str(edited)], False, instruction.strip(), meta, origin)
                continue
            folder = edited_root / name
            candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
            if not candidates:
                yield _bad(name, origin, f"no edited image {edited_root / name}.* nor images in {folder}/", meta=meta,
                           instruction=instruction, source=source)
                continue
            yield from _expand(name, source, [str(c) for c in candidates], True, instruction.strip(), meta, origin)


def _dedupe(samples: Iterator[Sample]) -> Iterator[Sample]:
    """Flag repeated ids. Keeps one 8-byte digest per id seen (the only state
    that grows with the manifest)."""
    seen: set[bytes] = set()
    for sample in samples:
        key = hashlib.blake2b(sample.id.encode("utf-8"), digest_size=8).digest()
        if key in seen:
            first = sample.origin or "?"
            sample.error = InputError(f"{first}: duplicate id {sample.id!r} (already used by an earlier line)")
            sample.id = f"{sample.id}@{first.rsplit(':', 1)[-1]}"
            sample.group = None
            sample.group_size = None
            sample.candidate = None
        else:
            seen.add(key)
        yield sample
