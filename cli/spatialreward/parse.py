"""Parsing of the model's SC and PQ answers: read every score the text holds, invent none.

The released scorer reads the score list leniently (and fakes 12.5 when it
cannot: we never do). This parser reads what that scorer would score and
records each liberty taken in the answer's ``notes`` (short human-readable
strings, carried into the output records).

Where the answer is taken from
  - Text up to the last ``</think>`` is thinking, never the answer. An earlier
    JSON object with a ``score`` there (a draft) is ignored, with a note
    ``answer after </think> used; N earlier JSON ignored``.
  - A ``<think>`` left open after that is thinking too: text after it is
    ignored (noted). A score that only appears inside it is an error.
  - In what remains, the answer is the last JSON object carrying a ``score``
    key (several: the last, noted), wherever it sits: Markdown code fences,
    text around it, doubled braces ``{{ }}`` and objects wrapping it are
    tolerated without a note.
  - Literal control characters (newline, tab) inside strings are accepted
    (strict JSON rejects them): noted ``control characters inside strings``.
  - No decodable JSON object with a ``score``, but a ``"score": [a, b]`` list
    readable by pattern (the way the released scorer reads it, e.g. an object
    never closed or a quote left unescaped in the reasoning): the scores are
    taken, noted ``scores read by pattern: no complete JSON answer``; regions
    are then dropped and counted, the reasoning is read by pattern when
    possible, else empty (noted).

What is tolerated inside the answer
  - ``score``: each entry a JSON number, or a string holding a plain decimal
    number (``"20"``, ``"22.5"``: noted ``score given as strings``); integers
    and non-integers alike, in 0..25 inclusive.
  - ``reasoning`` missing or not a string: empty, noted.
  - SC ``edit_region`` missing or not a list: no regions, noted.
  - A region whose ``bbox_2d`` coordinates lie slightly outside 0..1000 (by at
    most ``CLIP_TOLERANCE``) is clipped (``Region.clipped``); inverted corners
    are swapped per axis (``Region.reordered``); both noted. An ``id`` written
    as an integral string or float is converted, a missing or non-string
    ``label`` becomes ``""``, coordinates written as numeric strings are
    converted; all noted.
  - A region that cannot be read (not an object; ``id`` missing or not an
    integer; ``bbox_2d`` not four numbers, or further than ``CLIP_TOLERANCE``
    outside 0..1000) is dropped, noted ``edit_region[i] dropped: why``. A bad
    region never discards the scores.

What fails (``ParseError``; the caller makes it an error record, or under
``--structured auto`` a constrained repair, never a score)
  - an empty answer; no ``score`` list after the last ``</think>`` and
    outside an open ``<think>``, neither in a JSON object nor by pattern;
  - a ``score`` that is not a list of exactly two entries;
  - an entry that is not a number (booleans, null, NaN, infinity, ``"abc"``)
    or is outside 0..25.
Nothing here ever produces a score the text does not contain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .constants import BBOX_RANGE, SCORE_RANGE
from .errors import ParseError
from .numbers import is_number

CLIP_TOLERANCE = 50  # coordinates in -50..1050 are clipped to 0..1000; further out the region is dropped

_LENIENT = json.JSONDecoder(strict=False)  # NaN/Infinity decode to floats; is_number rejects them
_STRICT = json.JSONDecoder()
_NUMERIC_STRING = re.compile(r"\s*-?\d+(?:\.\d+)?\s*")
_NUM = r'"?\s*(-?\d+(?:\.\d+)?)\s*"?'
_SCORE_PATTERN = re.compile(r'"score"\s*:\s*\[\s*' + _NUM + r"\s*,\s*" + _NUM + r"\s*\]")
_REASONING_PATTERN = re.compile(r'"reasoning"\s*:\s*"(.*?)"\s*,\s*"score"\s*:', re.DOTALL)


@dataclass(frozen=True)
class Region:
    id: int
    label: str
    bbox_2d: tuple[float, float, float, float]
    reordered: bool = False  # inverted corners were swapped
    clipped: bool = False  # coordinates slightly outside 0..1000 were clipped

    def to_dict(self) -> dict:
        data = {"id": self.id, "label": self.label, "bbox_2d": list(self.bbox_2d)}
        if self.reordered:
            data["reordered"] = True
        if self.clipped:
            data["clipped"] = True
        return data


@dataclass(frozen=True)
class SCAnswer:
    regions: tuple[Region, ...]
    reasoning: str
    success: float
    overediting: float
    notes: tuple[str, ...] = ()  # what was tolerated to read this answer


@dataclass(frozen=True)
class PQAnswer:
    reasoning: str
    naturalness: float
    artifacts: float
    notes: tuple[str, ...] = ()


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _scored_objects(text: str) -> list[tuple[dict, int, int]]:
    """Every JSON object carrying a ``score`` key, as (object, start, end), in
    order; objects nested inside one already found are not listed again."""
    found = []
    position = 0
    while True:
        start = text.find("{", position)
        if start < 0:
            return found
        try:
            value, end = _LENIENT.raw_decode(text, start)
        except (ValueError, RecursionError):
            position = start + 1
            continue
        if isinstance(value, dict) and "score" in value:
            found.append((value, start, end))
            position = end
        else:
            position = start + 1  # look inside: it may wrap the answer


def _answer_span(text: str) -> tuple[str, list[str], bool]:
    """The part of ``text`` that can hold the answer, notes about the rest, and
    whether a ``<think>`` was left open."""
    notes = []
    cut = text.rfind("</think>")
    body = text if cut < 0 else text[cut + len("</think>"):]
    if cut >= 0:
        drafts = len(_scored_objects(text[:cut]))
        if drafts:
            notes.append(f"answer after </think> used; {drafts} earlier JSON ignored")
    open_think = body.find("<think>")
    if open_think >= 0:
        notes.append("text after an unterminated <think> ignored")
        body = body[:open_think]
    return body, notes, open_think >= 0


def _extract(text) -> tuple[dict, list[str], bool]:
    """(answer object, notes, read_by_pattern)."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    body, notes, open_think = _answer_span(text)
    candidates = _scored_objects(body)
    if candidates:
        obj, start, end = candidates[-1]
        if len(candidates) > 1:
            notes.append(f"last of {len(candidates)} JSON answers used")
        try:
            _STRICT.raw_decode(body[:end], start)
        except ValueError:
            notes.append("control characters inside strings")
        return obj, notes, False
    matches = list(_SCORE_PATTERN.finditer(body))
    if matches:
        last = matches[-1]
        obj = {"score": [float(last.group(1)), float(last.group(2))]}
        notes.append("scores read by pattern: no complete JSON answer")
        if len(matches) > 1:
            notes.append(f"last of {len(matches)} score lists used")
        regions = body[: last.start()].count('"bbox_2d"')
        if regions:
            notes.append(f"edit_region: {_plural(regions, 'region')} dropped (no complete JSON)")
        reasoning = list(_REASONING_PATTERN.finditer(body[: last.end()]))
        if reasoning:
            raw = reasoning[-1].group(1)
            try:
                obj["reasoning"] = json.loads('"' + raw + '"', strict=False)
            except ValueError:
                obj["reasoning"] = raw
            notes.append("reasoning read by pattern")
        else:
            obj["reasoning"] = ""
            notes.append("reasoning not readable: empty")
        return obj, notes, True
    if open_think:
        raise ParseError("unterminated <think> block and no answer before it")
    where = " after </think>" if "</think>" in text else ""
    if any(isinstance(v, dict) for v in _objects(body)):
        raise ParseError(f"JSON object has no 'score' key{where}")
    raise ParseError(f"no JSON object with a 'score' list in answer{where}")


def _objects(text: str):
    position = 0
    while (start := text.find("{", position)) >= 0:
        try:
            value, _ = _LENIENT.raw_decode(text, start)
            yield value
        except (ValueError, RecursionError):
            pass
        position = start + 1


def extract_json(text: str) -> dict:
    """The answer object of ``text`` (see the module docstring), as decoded."""
    return _extract(text)[0]


def _number(value) -> tuple[float | None, bool]:
    """(the value as a float or None if it is no number, whether it was a string)."""
    if is_number(value):
        return float(value), False
    if isinstance(value, str) and _NUMERIC_STRING.fullmatch(value):
        number = float(value)
        return (number, True) if is_number(number) else (None, True)
    return None, False


def box_numbers(box, name: str, notes: list[str]) -> list[float] | None:
    """A ``bbox_2d`` value's four numbers (ints where whole; a note when they
    came as strings), or None when it is not four numbers (the caller says
    what that costs)."""
    if not isinstance(box, list) or len(box) != 4:
        return None
    coords = [_number(v) for v in box]
    if any(number is None for number, _ in coords):
        return None
    if any(was_string for _, was_string in coords):
        notes.append(f"{name}.bbox_2d given as strings")
    return [int(n) if n == int(n) else n for n, _ in coords]


def _scores(obj: dict, notes: list[str]) -> tuple[float, float]:
    score = obj.get("score")
    if not isinstance(score, list) or len(score) != 2:
        raise ParseError(f"'score' must be a list of two numbers, got {json.dumps(score)[:80]}")
    values = []
    strings = False
    for value in score:
        number, was_string = _number(value)
        if number is None or not 0 <= number <= SCORE_RANGE:
            raise ParseError(f"score {json.dumps(value)[:40]} is not a number in 0..{SCORE_RANGE:g}")
        values.append(number)
        strings = strings or was_string
    if strings:
        notes.append("score given as strings")
    return values[0], values[1]


def _reasoning(obj: dict, notes: list[str]) -> str:
    if "reasoning" not in obj:
        notes.append("reasoning missing: empty")
        return ""
    reasoning = obj["reasoning"]
    if not isinstance(reasoning, str):
        notes.append("reasoning is not a string: ignored")
        return ""
    return reasoning


def _region(item, index: int, notes: list[str]) -> Region | None:
    name = f"edit_region[{index}]"
    if not isinstance(item, dict):
        notes.append(f"{name} dropped: not an object")
        return None
    rid = item.get("id")
    if "id" not in item:
        notes.append(f"{name} dropped: id missing")
        return None
    if not (isinstance(rid, int) and not isinstance(rid, bool)):
        number, was_string = _number(rid)
        if number is None or number != int(number):
            notes.append(f"{name} dropped: id is not an integer")
            return None
        notes.append(f"{name}.id given as a {'string' if was_string else 'float'}")
        rid = int(number)
    label = item.get("label")
    if not isinstance(label, str):
        notes.append(f"{name}.label {'missing' if label is None else 'is not a string'}: empty")
        label = ""
    box = item.get("bbox_2d")
    values = box_numbers(box, name, notes)
    if values is None:
        notes.append(f"{name} dropped: bbox_2d is not four numbers")
        return None
    if not all(-CLIP_TOLERANCE <= v <= BBOX_RANGE + CLIP_TOLERANCE for v in values):
        notes.append(f"{name} dropped: bbox_2d {json.dumps(box)[:60]} is far outside 0..{BBOX_RANGE}")
        return None
    clipped = not all(0 <= v <= BBOX_RANGE for v in values)
    if clipped:
        values = [min(max(v, 0), BBOX_RANGE) for v in values]
        notes.append(f"{name}.bbox_2d clipped to 0..{BBOX_RANGE}")
    x1, y1, x2, y2 = values
    reordered = x1 > x2 or y1 > y2
    if reordered:
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        notes.append(f"{name}.bbox_2d corners reordered")
    return Region(id=rid, label=label, bbox_2d=(x1, y1, x2, y2), reordered=reordered, clipped=clipped)


def _regions(obj: dict, notes: list[str], by_pattern: bool) -> tuple[Region, ...]:
    if by_pattern:
        return ()
    if "edit_region" not in obj:
        notes.append("edit_region missing: no regions")
        return ()
    items = obj["edit_region"]
    if not isinstance(items, list):
        notes.append("edit_region is not a list: no regions")
        return ()
    regions = [_region(item, i, notes) for i, item in enumerate(items)]
    return tuple(r for r in regions if r is not None)


def parse_sc(text: str) -> SCAnswer:
    """Parse an SC answer (see the module docstring for what is tolerated)."""
    obj, notes, by_pattern = _extract(text)
    success, overediting = _scores(obj, notes)
    regions = _regions(obj, notes, by_pattern)
    reasoning = _reasoning(obj, notes)
    return SCAnswer(regions=regions, reasoning=reasoning, success=success, overediting=overediting,
                    notes=tuple(notes))


def parse_pq(text: str) -> PQAnswer:
    """Parse a PQ answer (see the module docstring for what is tolerated)."""
    obj, notes, _ = _extract(text)
    naturalness, artifacts = _scores(obj, notes)
    reasoning = _reasoning(obj, notes)
    return PQAnswer(reasoning=reasoning, naturalness=naturalness, artifacts=artifacts, notes=tuple(notes))
