"""JSON schemas for grammar-constrained decoding of SC and PQ answers.

Used by ``--structured always`` (every request) and ``auto`` (only to
regenerate answers that failed strict parsing). Every string, array and
number is bounded so that a constrained answer always closes within
``max_new_tokens``: the bounds are derived from that budget, assuming the
worst case of four tokens per character. Strings exclude quotes, backslashes
and control characters, so the result always passes strict ``json.loads``.
Scores are integers 0..25 and boxes integers 0..1000 under the grammar.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from .constants import BBOX_RANGE, SCORE_RANGE

_FRAME_TOKENS = 80  # braces, keys, separators and the two scores
_REGION_TOKENS = 60  # one region without its label
_TOKENS_PER_CHAR = 4  # worst case: a non-ASCII character of four byte tokens


@dataclass(frozen=True)
class Bounds:
    max_regions: int
    label_chars: int
    sc_reasoning_chars: int
    pq_reasoning_chars: int


def bounds_for(max_new_tokens: int) -> Bounds:
    avail = max(0, max_new_tokens - _FRAME_TOKENS)
    max_regions = min(8, max(1, avail // 480))
    label_chars = min(64, max(4, avail // _TOKENS_PER_CHAR // (4 * max_regions)))
    region_cost = max_regions * (_REGION_TOKENS + _TOKENS_PER_CHAR * label_chars)
    return Bounds(
        max_regions=max_regions,
        label_chars=label_chars,
        sc_reasoning_chars=max(8, (avail - region_cost) // _TOKENS_PER_CHAR),
        pq_reasoning_chars=max(8, avail // _TOKENS_PER_CHAR),
    )


_CHAR = "[^\"\\\\\\x00-\\x1f\\x7f]"  # no quote, backslash or control character
_CHUNK = 100  # xgrammar refuses single repetition counts much above 128


def _string(max_chars: int) -> dict:
    """A string of at most ``max_chars`` characters (rounded down to a multiple
    of 100 above 100, written as nested repetitions xgrammar can compile)."""
    if max_chars <= _CHUNK:
        body = "%s{0,%d}" % (_CHAR, max_chars)
    else:
        body = "(%s{0,%d}){0,%d}" % (_CHAR, _CHUNK, max_chars // _CHUNK)
    return {"type": "string", "pattern": "^" + body + "$"}


def _score() -> dict:
    item = {"type": "integer", "minimum": 0, "maximum": int(SCORE_RANGE)}
    return {"type": "array", "items": item, "minItems": 2, "maxItems": 2}


def sc_schema(bounds: Bounds) -> dict:
    coordinate = {"type": "integer", "minimum": 0, "maximum": BBOX_RANGE}
    region = {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 99},
            "label": _string(bounds.label_chars),
            "bbox_2d": {"type": "array", "items": coordinate, "minItems": 4, "maxItems": 4},
        },
        "required": ["id", "label", "bbox_2d"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "edit_region": {"type": "array", "items": region, "maxItems": bounds.max_regions},
            "reasoning": _string(bounds.sc_reasoning_chars),
            "score": _score(),
        },
        "required": ["edit_region", "reasoning", "score"],
        "additionalProperties": False,
    }


def pq_schema(bounds: Bounds) -> dict:
    return {
        "type": "object",
        "properties": {"reasoning": _string(bounds.pq_reasoning_chars), "score": _score()},
        "required": ["reasoning", "score"],
        "additionalProperties": False,
    }


def schema_for(kind: str, max_new_tokens: int) -> dict:
    bounds = bounds_for(max_new_tokens)
    return sc_schema(bounds) if kind == "sc" else pq_schema(bounds)


@functools.lru_cache(maxsize=64)
def grammar_for(kind: str, max_new_tokens: int) -> str:
    """The EBNF grammar (xgrammar's) of ``schema_for(kind, max_new_tokens)``
    with no free whitespace, strict: the grammar the transformers path compiles,
    as text, for engines that take a grammar (vLLM's ``structured_outputs``).
    Sending it, rather than the schema, keeps whitespace out whatever the
    engine's own JSON-schema settings are."""
    import xgrammar as xgr

    schema = json.dumps(schema_for(kind, max_new_tokens))
    return str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True))
