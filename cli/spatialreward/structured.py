"""JSON schemas for grammar-constrained decoding of SC and PQ answers.

Used by ``--structured always`` (every request) and ``auto`` (only to
regenerate answers that failed parsing).

Layout: the trained one, as closely as a grammar allows. Keys in the trained
order (SC ``edit_region``, ``reasoning``, ``score``; PQ ``reasoning``,
``score``), no other key, compiled with the separators ``", "`` and ``": "``
and no other whitespace outside strings::

    {"edit_region": [{"id": 0, "label": "...", "bbox_2d": [x1, y1, x2, y2]}], "reasoning": "...", "score": [s1, s2]}

What the grammar cannot express is left to the parser: scores are integers
0..25 and coordinates integers 0..1000, but x1 <= x2 cannot be required
(inverted corners are reordered and flagged by ``parse``). Strings exclude
quotes, backslashes and line breaks, so no escape is ever needed. xgrammar's
length-bounded strings would admit the other control characters (tab, U+0000
to U+001F), which strict JSON forbids: ``json_tokenizer_info`` takes every
token holding one out of the grammar's vocabulary, so a constrained answer is
strict JSON.

Bounds: every string and array is bounded, so that an answer of typical
English closes within ``max_new_tokens``. The costs assumed are realistic for
Qwen's 151k byte-level BPE, not worst case (a worst-case four tokens per
character left 66 characters of SC reasoning at 512 tokens):

- ``CHARS_PER_TOKEN`` = 3 characters of reasoning or label per token (English
  runs at 3-4; the ``<|bbox_N|>`` markers and punctuation cost more, hence 3);
- ``FRAME_TOKENS`` = 40 for braces, keys, separators and the two scores (~25);
- ``REGION_TOKENS`` = 40 for one region without its label (~30: every digit
  of the four coordinates is its own token);
- labels of at most ``LABEL_CHARS`` = 48 characters (an eighth of the budget
  below ~170 tokens); at most ``MAX_REGIONS`` = 8 regions, one per
  ``REGION_SHARE`` = 150 tokens of budget (at least 1); the SC reasoning gets
  the rest, PQ the whole budget past the frame.

A model that writes denser text than assumed (say many non-ASCII
characters) can still run past ``max_new_tokens``: that answer is cut, which
is an explicit parse error ("answer cut at N tokens: raise
--max-new-tokens"), never a score. That is why a realistic rather than a
worst-case bound is acceptable. The backend passes ``chars_per_token_of(its
tokenizer)``: ``CHARS_PER_TOKEN``, or less for a tokenizer that spends more
tokens on English (the tiny test tokenizer: ~2).

At ``CHARS_PER_TOKEN`` (labels 48 characters): 512 tokens allow 3 regions,
912 characters of SC and 1416 of PQ reasoning; 1024 tokens 6 regions, 1944
and 2952; 4096 tokens 8 regions, 10824 and 12168.

Compile cost: strings are bounded with ``maxLength``, which xgrammar (>=
0.1.28) compiles into at most ~255 unrolled positions whatever the bound, so
compile time and memory do not grow with ``max_new_tokens``. (A regex
``pattern`` bound is unrolled once per character: at the real vocabulary size
the previous 4096-token SC grammar took minutes to compile; see
benchmarks/grammar_compile.py and benchmarks/README.md.)
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .constants import BBOX_RANGE, SCORE_RANGE

# Bumped whenever the grammar changes what a constrained answer may hold: part
# of the judge hash, so results of another grammar never resume into a run.
GRAMMAR_VERSION = 2
CHARS_PER_TOKEN = 3.0
FRAME_TOKENS = 40
REGION_TOKENS = 40
LABEL_CHARS = 48
MAX_REGIONS = 8
REGION_SHARE = 150
MIN_STRING_CHARS = 8


@dataclass(frozen=True)
class Bounds:
    max_regions: int
    label_chars: int
    sc_reasoning_chars: int
    pq_reasoning_chars: int


def bounds_for(max_new_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> Bounds:
    """String and array bounds for a token budget (see the module docstring)."""
    avail = max(0, max_new_tokens - FRAME_TOKENS)
    max_regions = min(MAX_REGIONS, max(1, avail // REGION_SHARE))
    label_chars = max(4, min(LABEL_CHARS, int(avail / 8 * chars_per_token)))
    region_cost = max_regions * (REGION_TOKENS + label_chars / chars_per_token)
    return Bounds(
        max_regions=max_regions,
        label_chars=label_chars,
        sc_reasoning_chars=max(MIN_STRING_CHARS, int((avail - region_cost) * chars_per_token)),
        pq_reasoning_chars=max(MIN_STRING_CHARS, int(avail * chars_per_token)),
    )


# Plain English of the kind the model writes, to measure a tokenizer's characters per token.
_ENGLISH_SAMPLE = (
    "The red cup on the left side of the table was replaced by a blue mug, as the instruction asks. "
    "The saucer, the spoon and the window behind them are unchanged; the lighting and shadows of the "
    "new mug match the rest of the scene, although a faint halo remains along its rim."
)


def chars_per_token_of(tokenizer) -> float:
    """``CHARS_PER_TOKEN``, or less for a tokenizer that spends more tokens on
    plain English (a small test vocabulary): characters per token of a fixed
    English sample under ``tokenizer``, capped at ``CHARS_PER_TOKEN``."""
    tokens = len(tokenizer.encode(_ENGLISH_SAMPLE, add_special_tokens=False))
    return min(CHARS_PER_TOKEN, len(_ENGLISH_SAMPLE) / max(1, tokens))


def local_chars_per_token(model: str, revision: str | None = None) -> float:
    """``chars_per_token_of`` the model's tokenizer when it is on this machine (a
    folder, or the Hugging Face cache), for engines that tokenize elsewhere, so
    their grammar is the transformers path's; else ``CHARS_PER_TOKEN`` (what
    Qwen's tokenizer gives, capped). A ``tokenizer.json`` is read with the
    ``tokenizers`` library alone (the same token ids as transformers' fast
    tokenizer): an OpenAI-compatible client imports neither torch nor transformers."""
    found = _local_file(model, revision, "tokenizer.json")
    if found:
        try:
            from tokenizers import Tokenizer

            return chars_per_token_of(Tokenizer.from_file(found))
        except Exception:  # noqa: BLE001 - a file tokenizers cannot read: transformers may
            pass
    if not _local_file(model, revision, "tokenizer_config.json"):
        return CHARS_PER_TOKEN  # not here: Qwen's own figure, without importing transformers
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not loadable here: the default is Qwen's own figure
        return CHARS_PER_TOKEN
    return chars_per_token_of(tokenizer)


def _local_file(model: str, revision: str | None, name: str) -> str | None:
    """``name`` of ``model`` on this machine: in the folder, or in the Hugging
    Face cache for a hub id (no network); else None."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder / name) if (folder / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, name, revision=revision)
    except Exception:  # noqa: BLE001 - not a hub id either
        return None
    return cached if isinstance(cached, str) else None


def _string(max_chars: int) -> dict:
    """A string of at most ``max_chars`` characters (Unicode code points)."""
    return {"type": "string", "maxLength": max_chars}


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


MAX_T2I_OBJECTS = 12
MAX_T2I_RELATIONS = 12


def t2i_schema(bounds: Bounds) -> dict:
    """The t2i-spatial answer (``spatialreward.t2i``): objects with a box or null,
    relations with a boolean verdict, reasoning, two scores."""
    coordinate = {"type": "integer", "minimum": 0, "maximum": BBOX_RANGE}
    box = {"anyOf": [{"type": "array", "items": coordinate, "minItems": 4, "maxItems": 4}, {"type": "null"}]}
    label = _string(bounds.label_chars)
    obj = {"type": "object", "properties": {"label": label, "bbox_2d": box},
           "required": ["label", "bbox_2d"], "additionalProperties": False}
    relation = {"type": "object",
                "properties": {"subject": label, "relation": _string(32), "object": label, "holds": {"type": "boolean"}},
                "required": ["subject", "relation", "object", "holds"], "additionalProperties": False}
    reasoning = max(MIN_STRING_CHARS, bounds.pq_reasoning_chars // 3)
    return {
        "type": "object",
        "properties": {
            "objects": {"type": "array", "items": obj, "maxItems": MAX_T2I_OBJECTS},
            "relations": {"type": "array", "items": relation, "maxItems": MAX_T2I_RELATIONS},
            "reasoning": _string(reasoning),
            "score": _score(),
        },
        "required": ["objects", "relations", "reasoning", "score"],
        "additionalProperties": False,
    }


def schema_for(kind: str, max_new_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> dict:
    bounds = bounds_for(max_new_tokens, chars_per_token)
    if kind == "t2i":
        return t2i_schema(bounds)
    return sc_schema(bounds) if kind == "sc" else pq_schema(bounds)


_CONTROL = re.compile(rb"[\x00-\x1f]")


def json_tokenizer_info(info):
    """``info`` (an ``xgrammar.TokenizerInfo``) without the tokens that hold a
    control character: xgrammar treats an empty token as special and never lets
    a grammar emit it, so constrained strings stay strict JSON."""
    import xgrammar as xgr

    vocab = [b"" if _CONTROL.search(token) else token for token in info.decoded_vocab]
    return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=info.vocab_size,
                             stop_token_ids=info.stop_token_ids)


@functools.lru_cache(maxsize=64)
def grammar_for(kind: str, max_new_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> str:
    """The EBNF grammar (xgrammar's) of ``schema_for(kind, max_new_tokens)``
    with no free whitespace, strict: the grammar the transformers path compiles,
    as text, for engines that take a grammar (vLLM's ``structured_outputs``).
    Sending it, rather than the schema, keeps whitespace out whatever the
    engine's own JSON-schema settings are."""
    import xgrammar as xgr

    schema = json.dumps(schema_for(kind, max_new_tokens, chars_per_token))
    return str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True,
                                            separators=(", ", ": ")))
