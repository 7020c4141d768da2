"""Constrained-decoding schemas (spatialreward.structured): realistic bounds and the trained layout."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from spatialreward.structured import (
    CHARS_PER_TOKEN,
    FRAME_TOKENS,
    REGION_TOKENS,
    bounds_for,
    chars_per_token_of,
    json_tokenizer_info,
    pq_schema,
    sc_schema,
    schema_for,
)

TRAINED_SC = ('{"edit_region": [{"id": 0, "label": "the dog", "bbox_2d": [12, 340, 560, 998]}], '
              '"reasoning": "<|bbox_0|> The dog was removed. <|global|> Clean edit.", "score": [21, 18]}')
TRAINED_PQ = '{"reasoning": "Natural light, no visible artifacts.", "score": [23, 24]}'


def test_bounds_at_512_and_4096():
    small = bounds_for(512)
    assert small.max_regions >= 3
    assert small.sc_reasoning_chars >= 600 and small.pq_reasoning_chars >= 1000
    assert small.label_chars == 48
    large = bounds_for(4096)
    assert large.max_regions == 8
    assert large.sc_reasoning_chars >= 5000 and large.pq_reasoning_chars >= 5000


@pytest.mark.parametrize("budget", [160, 256, 512, 1024, 2048, 4096, 8192])
@pytest.mark.parametrize("cpt", [CHARS_PER_TOKEN, 2.0, 1.0])
def test_bounds_fit_the_budget_at_the_assumed_cost(budget, cpt):
    b = bounds_for(budget, cpt)
    sc = FRAME_TOKENS + b.max_regions * (REGION_TOKENS + b.label_chars / cpt) + b.sc_reasoning_chars / cpt
    assert sc <= budget
    assert FRAME_TOKENS + b.pq_reasoning_chars / cpt <= budget


def test_bounds_grow_with_the_budget():
    sizes = [bounds_for(n) for n in (256, 512, 1024, 4096)]
    assert [b.sc_reasoning_chars for b in sizes] == sorted(b.sc_reasoning_chars for b in sizes)
    assert [b.max_regions for b in sizes] == sorted(b.max_regions for b in sizes)


def test_chars_per_token_is_measured_and_capped():
    dense = SimpleNamespace(encode=lambda text, add_special_tokens=False: list(range(len(text) // 5)))
    assert chars_per_token_of(dense) == CHARS_PER_TOKEN
    bytewise = SimpleNamespace(encode=lambda text, add_special_tokens=False: list(range(len(text))))
    assert chars_per_token_of(bytewise) == 1.0
    assert bounds_for(512, 1.0).sc_reasoning_chars < bounds_for(512).sc_reasoning_chars


def test_a_local_tokenizer_is_measured_without_transformers(tiny_model, tmp_path):
    """An OpenAI-compatible client measures the model's tokenizer when it is
    here (a folder, or the hub cache) exactly as the transformers path does, and
    takes Qwen's figure for a model that is not, importing neither torch nor
    transformers for either (a --backend openai or --ray driver starts in a second)."""
    import os
    import shutil
    import subprocess
    import sys

    from transformers import AutoTokenizer

    expected = chars_per_token_of(AutoTokenizer.from_pretrained(tiny_model))
    assert expected < CHARS_PER_TOKEN  # the tiny byte-level vocabulary: a figure of its own
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    code = ("import json, sys\nfrom spatialreward.structured import local_chars_per_token as f\n"
            "print(json.dumps([f(sys.argv[1]), f('acme/tiny'), f('SpatialReward/SpatialReward-8B'), f(sys.argv[2]),"
            " sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model), str(tmp_path / "nope")], capture_output=True,
                          text=True, env={**os.environ, "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [expected, expected, CHARS_PER_TOKEN, CHARS_PER_TOKEN, []]


def test_keys_in_the_trained_order():
    b = bounds_for(512)
    sc = sc_schema(b)
    assert list(sc["properties"]) == ["edit_region", "reasoning", "score"] == sc["required"]
    region = sc["properties"]["edit_region"]["items"]
    assert list(region["properties"]) == ["id", "label", "bbox_2d"] == region["required"]
    assert list(pq_schema(b)["properties"]) == ["reasoning", "score"]
    assert schema_for("sc", 512) == sc


@pytest.fixture(scope="module")
def compile_grammar():
    """Compile through the backend's own ``_grammar`` (its xgrammar flags) on a byte vocabulary."""
    xgr = pytest.importorskip("xgrammar")
    from spatialreward.backends.transformers_backend import TransformersBackend

    info = json_tokenizer_info(xgr.TokenizerInfo([bytes([i]) for i in range(256)] + [b"<|im_end|>"],
                                                 xgr.VocabType.RAW, vocab_size=257, stop_token_ids=[256]))
    stub = SimpleNamespace(_grammars={}, _compiler=xgr.GrammarCompiler(info), _chars_per_token=CHARS_PER_TOKEN)

    def accepts(kind: str, budget: int, text: str, token: int | None = None) -> bool:
        """Whether the grammar accepts ``text`` and then the stop token, or, given
        ``token``, whether it lets the model emit that token after ``text``."""
        matcher = xgr.GrammarMatcher(TransformersBackend._grammar(stub, kind, budget))
        if not matcher.accept_string(text):
            return False
        if token is not None:
            return matcher.accept_token(token)
        return matcher.accept_token(256) and matcher.is_terminated()

    return accepts


def test_grammar_accepts_the_trained_layout(compile_grammar):
    assert compile_grammar("sc", 512, TRAINED_SC)
    assert compile_grammar("pq", 512, TRAINED_PQ)
    assert compile_grammar("sc", 512, '{"edit_region": [], "reasoning": "No edit.", "score": [0, 25]}')


@pytest.mark.parametrize(
    "kind, text",
    [
        ("sc", TRAINED_SC.replace(", ", ",")),  # other separators
        ("sc", TRAINED_SC.replace(": ", ":")),
        ("pq", TRAINED_PQ.replace("{", "{ ")),  # whitespace outside strings
        ("pq", '{"score": [23, 24], "reasoning": "r"}'),  # other key order
        ("sc", '{"reasoning": "r", "edit_region": [], "score": [1, 2]}'),
        ("pq", TRAINED_PQ.replace("[23, 24]", "[23, 26]")),  # out of range
        ("pq", TRAINED_PQ.replace("[23, 24]", "[23.5, 24]")),  # integers only
        ("pq", json.dumps({"reasoning": "x" * (bounds_for(512).pq_reasoning_chars + 1), "score": [1, 2]})),
        ("sc", TRAINED_SC.replace("[12, 340, 560, 998]", "[12, 340, 560, 1001]")),
        ("pq", TRAINED_PQ.replace("Natural light", "Natural\\nlight")),  # escapes
    ],
)
def test_grammar_rejects_other_layouts(compile_grammar, kind, text):
    assert not compile_grammar(kind, 512, text)


@pytest.mark.parametrize("byte", [0x00, 0x01, 0x09, 0x0A, 0x1F])
def test_no_control_character_token_inside_strings(compile_grammar, byte):
    """xgrammar's bounded strings admit control characters; the vocabulary does not."""
    assert compile_grammar("pq", 512, '{"reasoning": "Natural', token=ord("l"))
    assert not compile_grammar("pq", 512, '{"reasoning": "Natural', token=byte)
