"""Strict parsing of the model's SC and PQ answers.

Tolerated around the answer: a ``<think>...</think>`` block, Markdown code
fences, and any text before or after the JSON object. Required of the answer:
``score`` is a list of exactly two numbers in 0..25 (no strings, booleans or
NaN); SC's ``edit_region`` is a list of regions with an integer ``id``, a string
``label`` and ``bbox_2d`` four numbers in 0..1000 with x1 <= x2 and y1 <= y2;
``reasoning`` is a string. Anything else raises ``ParseError``: the caller
turns it into an error record (or a constrained repair), never a score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .constants import BBOX_RANGE, SCORE_RANGE
from .errors import ParseError

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_DECODER = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number")


@dataclass(frozen=True)
class Region:
    id: int
    label: str
    bbox_2d: tuple[float, float, float, float]
    reordered: bool = False  # corners were swapped (constrained decoding only)

    def to_dict(self) -> dict:
        data = {"id": self.id, "label": self.label, "bbox_2d": list(self.bbox_2d)}
        if self.reordered:
            data["reordered"] = True
        return data


@dataclass(frozen=True)
class SCAnswer:
    regions: tuple[Region, ...]
    reasoning: str
    success: float
    overediting: float


@dataclass(frozen=True)
class PQAnswer:
    reasoning: str
    naturalness: float
    artifacts: float


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def extract_json(text: str) -> dict:
    """The first JSON object in ``text`` that carries a ``score`` key."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    body = _THINK.sub("", text)
    if "<think>" in body:
        raise ParseError("unterminated <think> block")
    found_object = False
    for match in re.finditer(r"\{", body):
        try:
            value, _ = _DECODER.raw_decode(body, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found_object = True
            if "score" in value:
                return value
    if found_object:
        raise ParseError("JSON object has no 'score' key")
    raise ParseError("no JSON object in answer")


def _scores(obj: dict) -> tuple[float, float]:
    score = obj.get("score")
    if not isinstance(score, list) or len(score) != 2:
        raise ParseError(f"'score' must be a list of two numbers, got {json.dumps(score)[:80]}")
    for value in score:
        if not _is_number(value) or not 0 <= value <= SCORE_RANGE:
            raise ParseError(f"score {json.dumps(value)[:40]} is not a number in 0..{SCORE_RANGE:g}")
    return float(score[0]), float(score[1])


def _reasoning(obj: dict) -> str:
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str):
        raise ParseError("'reasoning' must be a string")
    return reasoning


def _region(item, index: int, reorder: bool) -> Region:
    if not isinstance(item, dict):
        raise ParseError(f"edit_region[{index}] is not an object")
    rid, label, box = item.get("id"), item.get("label"), item.get("bbox_2d")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ParseError(f"edit_region[{index}].id must be an integer")
    if not isinstance(label, str):
        raise ParseError(f"edit_region[{index}].label must be a string")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ParseError(f"edit_region[{index}].bbox_2d must be four numbers")
    if not all(0 <= v <= BBOX_RANGE for v in box):
        raise ParseError(f"edit_region[{index}].bbox_2d {box} is outside 0..{BBOX_RANGE}")
    x1, y1, x2, y2 = box
    reordered = False
    if x1 > x2 or y1 > y2:
        if not reorder:
            raise ParseError(f"edit_region[{index}].bbox_2d {box} has x1 > x2 or y1 > y2")
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        reordered = True
    return Region(id=rid, label=label, bbox_2d=(x1, y1, x2, y2), reordered=reordered)


def parse_sc(text: str, *, reorder_boxes: bool = False) -> SCAnswer:
    """Parse an SC answer. ``reorder_boxes`` swaps inverted corners instead of
    rejecting them; it is meant for grammar-constrained answers only, where the
    grammar cannot express x1 <= x2, and marks each such region ``reordered``."""
    obj = extract_json(text)
    regions = obj.get("edit_region")
    if not isinstance(regions, list):
        raise ParseError("'edit_region' must be a list")
    parsed = tuple(_region(item, i, reorder_boxes) for i, item in enumerate(regions))
    success, overediting = _scores(obj)
    return SCAnswer(regions=parsed, reasoning=_reasoning(obj), success=success, overediting=overediting)


def parse_pq(text: str) -> PQAnswer:
    obj = extract_json(text)
    naturalness, artifacts = _scores(obj)
    return PQAnswer(reasoning=_reasoning(obj), naturalness=naturalness, artifacts=artifacts)
