#!/usr/bin/env python
"""Compile time, memory and per-token mask time of the constrained-decoding
grammars at the real Qwen3-VL vocabulary size.

The grammars are compiled through the transformers backend's own
``TransformersBackend._grammar`` (same schema, same xgrammar flags, the same
``json_tokenizer_info`` filtering of the vocabulary), against:

- a synthetic byte-level vocabulary of Qwen3-VL's size: 256 byte tokens,
  151,387 generated pieces (English-like words and subwords with and without
  a leading space, CJK and other non-ASCII pieces, partial UTF-8 sequences,
  punctuation/whitespace runs incl. quote-bearing pieces like ``",``; no
  digits beyond the ten single-digit byte tokens, as in Qwen's BPE), Qwen's 26
  special/added tokens (ids 151643..151668), vocab_size 151,936 (the model's
  padded embedding size). The real tokenizer cannot be downloaded here; what
  drives the cost is the vocabulary's size and how many pieces a string
  position accepts, which this mimics.
- baselines measured in the same run: the tiny test tokenizer (640 tokens) with
  the same grammars; the same schemas with unbounded strings; and the previous
  schemas (worst-case bounds, regex-pattern strings) at 512 and 1024 tokens
  (4096 with ``--previous-4096``: minutes on 2 cores).

Per grammar: wall time of the compile (a fresh ``GrammarCompiler`` each, the
backend's default 8 threads), ``CompiledGrammar.memory_size_bytes``, the
growth of the process RSS across the compile, and the time of
``fill_next_token_bitmask`` per token while a trained-layout answer (2 regions,
~600 characters of reasoning) is fed through a matcher (which also checks that
the grammar accepts that answer).

    python benchmarks/grammar_compile.py                 # ~1 min on 2 cores
    python benchmarks/grammar_compile.py --budgets 512 4096 --json out.json
    python benchmarks/grammar_compile.py --budgets 4096 --previous-4096  # 6-17 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))

import xgrammar as xgr  # noqa: E402

from spatialreward.backends import transformers_backend as tb  # noqa: E402
from spatialreward.structured import (  # noqa: E402
    CHARS_PER_TOKEN,
    bounds_for,
    chars_per_token_of,
    json_tokenizer_info,
    schema_for,
)

QWEN_REGULAR = 151_643  # Qwen2/3 BPE tokens (ids 0..151642)
QWEN_VOCAB_SIZE = 151_936  # Qwen3-VL-8B text_config.vocab_size (padded)
QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]
STOP = [QWEN_REGULAR + QWEN_SPECIAL.index("<|im_end|>"), QWEN_REGULAR + QWEN_SPECIAL.index("<|endoftext|>")]

SC_ANSWER = json.dumps({
    "edit_region": [
        {"id": 0, "label": "red square", "bbox_2d": [612, 187, 845, 436]},
        {"id": 1, "label": "coffee cup rim", "bbox_2d": [210, 402, 598, 771]},
    ],
    "reasoning": (
        "<|bbox_0|> A red square was added in the upper right part of the image, as the instruction asks; "
        "its edges are sharp and its colour is flat, so it reads as a pasted shape rather than an object of "
        "the scene. <|bbox_1|> The rim of the coffee cup next to it is slightly brighter than in the source, "
        "a small change that the instruction did not ask for. <|global|> The rest of the scene, the saucer, "
        "the table and the lighting, is unchanged. The edit follows the instruction well and changes little "
        "else, with one minor unrequested change near the cup."
    ),
    "score": [22, 19],
}, ensure_ascii=False)
PQ_ANSWER = json.dumps({
    "reasoning": (
        "The image looks mostly natural: the lighting and the shadows agree, and the textures of the table and "
        "the cup are intact. The red square in the upper right has hard, aliased edges and no shading, which "
        "makes it look pasted on, and there is faint banding in the dark background near it. No other "
        "artifacts are visible."
    ),
    "score": [17, 20],
}, ensure_ascii=False)


# -- vocabularies --------------------------------------------------------------


def synthetic_qwen_vocab(seed: int = 0) -> list[bytes]:
    """151,669 byte strings: 256 bytes, 151,387 unique generated pieces, 26 specials."""
    rng = random.Random(seed)
    vocab = [bytes([i]) for i in range(256)]
    seen = set(vocab)
    consonants, vowels = "bcdfghjklmnpqrstvwxyz", "aeiou"
    cyrillic = [chr(c) for c in range(0x430, 0x450)]
    accented = list("éèàùâêîôûçëïüöäßñ")
    punct = '{}[]()"\',.:;!?-_/\\<>|=+*&^%$#@~` '

    def word() -> str:
        syllables = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))
        return syllables[rng.randint(0, 1):][: rng.randint(2, 12)]

    while len(vocab) < QWEN_REGULAR:
        kind = rng.random()
        if kind < 0.55:  # English-like words and subwords
            piece = word()
            if rng.random() < 0.5:
                piece = " " + piece
            if rng.random() < 0.15:
                piece = piece.title()
            data = piece.encode()
        elif kind < 0.80:  # CJK, 1-3 characters (3 bytes each)
            data = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3))).encode()
        elif kind < 0.88:  # other scripts and accented Latin
            alphabet = cyrillic if rng.random() < 0.6 else accented + list("abcdefghijklmnopqrstuvwxyz")
            data = ((" " if rng.random() < 0.5 else "") + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))).encode()
        elif kind < 0.91:  # partial UTF-8 sequences (byte-level BPE has them)
            data = chr(rng.randint(0x4E00, 0x9FFF)).encode()[: rng.randint(1, 2)] + bytes([rng.randint(0x80, 0xBF)])
        elif kind < 0.98:  # punctuation, code and whitespace pieces
            data = "".join(rng.choice(punct + "\n\t") for _ in range(rng.randint(2, 4))).encode()
        else:  # long runs (indentation, rules)
            data = (rng.choice([" ", "-", "=", "\n", "\t", "*", "_"]) * rng.randint(4, 64)).encode()
        if data not in seen:
            seen.add(data)
            vocab.append(data)
    return vocab + [s.encode() for s in QWEN_SPECIAL]


def greedy_tokenize(text: str, ids: dict[bytes, int], longest: int = 64) -> list[int]:
    data, out, i = text.encode(), [], 0
    while i < len(data):
        for n in range(min(longest, len(data) - i), 0, -1):
            token = ids.get(data[i:i + n])
            if token is not None:
                out.append(token)
                i += n
                break
    return out


# -- schemas compared ----------------------------------------------------------


def unbounded_schema(kind: str, max_new_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> dict:
    """The same schema with every string unbounded (the cost of the bounds)."""
    schema = schema_for(kind, max_new_tokens, chars_per_token)

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "maxLength"}
        return node

    return strip(schema)


def previous_schema(kind: str, max_new_tokens: int, chars_per_token: float = 0.0) -> dict:
    """The schemas before this change: four tokens per character worst case,
    strings as nested regex repetitions of at most 100 characters."""
    avail = max(0, max_new_tokens - 80)
    max_regions = min(8, max(1, avail // 480))
    label = min(64, max(4, avail // 4 // (4 * max_regions)))
    sc_chars = max(8, (avail - max_regions * (60 + 4 * label)) // 4)
    pq_chars = max(8, avail // 4)
    char = "[^\"\\\\\\x00-\\x1f\\x7f]"

    def string(n):
        body = "%s{0,%d}" % (char, n) if n <= 100 else "(%s{0,100}){0,%d}" % (char, n // 100)
        return {"type": "string", "pattern": "^" + body + "$"}

    score = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 25}, "minItems": 2, "maxItems": 2}
    if kind == "pq":
        return {"type": "object", "properties": {"reasoning": string(pq_chars), "score": score},
                "required": ["reasoning", "score"], "additionalProperties": False}
    coordinate = {"type": "integer", "minimum": 0, "maximum": 1000}
    region = {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 99}, "label": string(label),
        "bbox_2d": {"type": "array", "items": coordinate, "minItems": 4, "maxItems": 4}},
        "required": ["id", "label", "bbox_2d"], "additionalProperties": False}
    return {"type": "object", "properties": {
        "edit_region": {"type": "array", "items": region, "maxItems": max_regions},
        "reasoning": string(sc_chars), "score": score},
        "required": ["edit_region", "reasoning", "score"], "additionalProperties": False}


# -- measuring -----------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(info, tokenize, schema_fn, kind: str, budget: int, chars_per_token: float) -> dict:
    """Compile through the backend's ``_grammar`` with ``schema_fn`` in place of
    ``schema_for``; then time the token masks over a trained-layout answer."""
    compiler = xgr.GrammarCompiler(info)  # as the backend builds it
    stub = SimpleNamespace(_grammars={}, _compiler=compiler, _chars_per_token=chars_per_token)
    saved, tb.schema_for = tb.schema_for, schema_fn
    try:
        before = rss_mib()
        start = time.perf_counter()
        grammar = tb.TransformersBackend._grammar(stub, kind, budget)
        seconds = time.perf_counter() - start
        grown = rss_mib() - before
    finally:
        tb.schema_for = saved
    answer = SC_ANSWER if kind == "sc" else PQ_ANSWER
    matcher = xgr.GrammarMatcher(grammar)
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    times, accepted = [], True
    for token in tokenize(answer):
        tick = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        times.append(time.perf_counter() - tick)
        if not matcher.accept_token(token):
            accepted = False
            break
    accepted = accepted and matcher.accept_token(info.stop_token_ids[0]) and matcher.is_terminated()
    return {
        "compile_s": seconds,
        "grammar_mib": grammar.memory_size_bytes / 2**20,
        "rss_growth_mib": grown,
        "mask_us_mean": 1e6 * sum(times) / max(1, len(times)),
        "mask_us_max": 1e6 * max(times, default=0.0),
        "answer_tokens": len(times),
        "accepts_answer": accepted,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 4096], help="max_new_tokens values")
    parser.add_argument("--previous-4096", action="store_true", help="also compile the previous schemas at 4096 (slow)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)

    print(f"xgrammar {version('xgrammar')}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    start = time.perf_counter()
    vocab = synthetic_qwen_vocab()
    ids = {piece: i for i, piece in enumerate(vocab[:QWEN_REGULAR])}
    # as the backend does: tokens holding a control character taken out
    qwen = json_tokenizer_info(xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=QWEN_VOCAB_SIZE, stop_token_ids=STOP))
    print(f"synthetic Qwen-size vocabulary: {len(vocab):,} tokens, vocab_size {QWEN_VOCAB_SIZE:,} "
          f"({time.perf_counter() - start:.1f} s to build)", flush=True)

    from spatialreward.testing.random_model import build_tokenizer

    tiny_tok = build_tokenizer()
    tiny_cpt = chars_per_token_of(tiny_tok)
    tiny = json_tokenizer_info(xgr.TokenizerInfo.from_huggingface(
        tiny_tok, vocab_size=(len(tiny_tok) + 63) // 64 * 64,
        stop_token_ids=[tiny_tok.convert_tokens_to_ids("<|im_end|>")]))

    def qwen_tokens(text):
        return greedy_tokenize(text, ids)

    def tiny_tokens(text):
        return tiny_tok.encode(text, add_special_tokens=False)

    cases = []  # (name, vocabulary, tokenize, schema_fn, budget, chars_per_token)
    for budget in args.budgets:
        cases.append(("new", "qwen", qwen_tokens, schema_for, budget, CHARS_PER_TOKEN))
    for budget in args.budgets:
        cases.append(("new", "tiny", tiny_tokens, schema_for, budget, tiny_cpt))
    cases.append(("unbounded", "qwen", qwen_tokens, unbounded_schema, max(args.budgets), CHARS_PER_TOKEN))
    for budget in [b for b in (512, 1024) if b in args.budgets] + ([4096] if args.previous_4096 else []):
        cases.append(("previous", "qwen", qwen_tokens, previous_schema, budget, CHARS_PER_TOKEN))

    results = []
    infos = {"qwen": qwen, "tiny": tiny}
    for name, vocabulary, tokenize, schema_fn, budget, cpt in cases:
        for kind in ("sc", "pq"):
            row = {"schema": name, "vocab": vocabulary, "kind": kind, "max_new_tokens": budget}
            if name == "new":
                row["bounds"] = bounds_for(budget, cpt).__dict__
            row.update(measure(infos[vocabulary], tokenize, schema_fn, kind, budget, cpt))
            results.append(row)
            print(f"{name:9s} {vocabulary:4s} {kind} {budget:5d}: compile {row['compile_s']:7.2f} s, "
                  f"grammar {row['grammar_mib']:6.2f} MiB, RSS +{row['rss_growth_mib']:6.1f} MiB, "
                  f"mask {row['mask_us_mean']:7.0f} us/token (max {row['mask_us_max']:.0f}), "
                  f"answer accepted: {row['accepts_answer']}", flush=True)

    def find(name, vocabulary, kind, budget):
        for row in results:
            if (row["schema"], row["vocab"], row["kind"], row["max_new_tokens"]) == (name, vocabulary, kind, budget):
                return row
        return None

    print("\nratios (compile time; grammar memory)")
    top = max(args.budgets)
    for kind in ("sc", "pq"):
        unbounded = find("unbounded", "qwen", kind, top)
        for budget in args.budgets:
            new, small, old = find("new", "qwen", kind, budget), find("new", "tiny", kind, budget), find("previous", "qwen", kind, budget)
            parts = [f"{kind} {budget:5d}: vs tiny vocab x{new['compile_s'] / small['compile_s']:.0f}; "
                     f"vs unbounded strings x{new['compile_s'] / unbounded['compile_s']:.0f}, "
                     f"memory x{new['grammar_mib'] / unbounded['grammar_mib']:.0f}"]
            if old:
                parts.append(f"previous schema / new: time x{old['compile_s'] / new['compile_s']:.2f}, "
                             f"memory x{old['grammar_mib'] / new['grammar_mib']:.2f}")
            print("  " + "; ".join(parts))
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
