"""What the model is given: which images, in which order, with which prompt,
on which pixel grid, with which chat text.

A random tiny model ignores its images, so these tests never rely on answers:
the judge-level tests record the requests a backend receives
(``ScriptedBackend``), the backend-level tests spy on what the Qwen3-VL
processor and ``generate()`` receive. ``scripts/mutation_check.py`` proves
that each protocol mutation fails at least one of them.
"""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import write_jsonl
from spatialreward.backends.transformers_backend import TransformersBackend
from spatialreward.config import Generation, load_config
from spatialreward.images import load_image
from spatialreward.judge import Judge, request_seed
from spatialreward.manifest import read_manifest
from spatialreward.prompts import render_pq, render_sc
from spatialreward.requests import pq_request, sc_request
from spatialreward.testing.scripted import PQ_OK, SC_OK, ScriptedBackend, image_digest

QWEN3_VL_PROCESSOR_DEFAULTS = {"shortest_edge": 65536, "longest_edge": 16777216}


def digest(path) -> str:
    return image_digest(load_image(path))


def recorded(backend: ScriptedBackend) -> dict[int, tuple]:
    """Every request the backend saw, by its seed (unique per edit, pass and
    kind): (kind, image digests, prompt). A request sent twice fails here."""
    seen = [(r.seed, (r.kind, tuple(image_digest(i) for i in r.images), r.prompt))
            for call in backend.calls for r in call["requests"]]
    assert len({seed for seed, _ in seen}) == len(seen), "a request was sent twice"
    return dict(seen)


@pytest.fixture()
def manifest(photos, tmp_path):
    """Two single edits (landscape, portrait) and a group of three candidates."""
    return write_jsonl(tmp_path / "m.jsonl", [
        {"id": "red", "source": str(photos["coffee"]), "edited": str(photos["coffee_red_square"]),
         "instruction": "Add a red square"},
        {"id": "mirror", "source": str(photos["astronaut"]), "edited": str(photos["astronaut_mirror"]),
         "instruction": "  Mirror the photo  "},
        {"id": "grp", "source": str(photos["coffee"]),
         "edited": [str(photos["coffee_gray"]), str(photos["coffee_blur"]), str(photos["coffee_red_square"])],
         "instruction": "Make it look different"},
    ])


def expected_requests(samples, *, passes: int, seed: int = 42) -> dict[int, tuple]:
    """The published protocol, written out: for each edit and pass, SC (source,
    edited, SC prompt with the stripped instruction) and PQ (edited, PQ prompt)."""
    out = {}
    for s in samples:
        for p in range(passes):
            out[request_seed(seed, s.id, p, "sc")] = (
                "sc", (digest(s.source), digest(s.edited)), render_sc(s.instruction.strip()))
            out[request_seed(seed, s.id, p, "pq")] = ("pq", (digest(s.edited),), render_pq())
    return out


@pytest.mark.parametrize("passes", [1, 2])
def test_judge_sends_the_published_requests(manifest, passes):
    """Single edits and a ranked group, one or two passes: each SC request holds
    the source then the edited image and the SC prompt with this edit's
    instruction; each PQ request the edited image alone and the PQ prompt."""
    generation = {"passes": passes, "temperature": 0.7} if passes > 1 else {}
    config = load_config(overrides={"batch_size": 2, "generation": generation})
    backend = ScriptedBackend()
    judge = Judge(backend, config)
    samples = list(read_manifest(manifest))
    assert [s.id for s in samples] == ["red", "mirror", "grp#0", "grp#1", "grp#2"]
    results = list(judge.score_many(samples))
    assert all(r.ok for r in results)
    assert recorded(backend) == expected_requests(samples, passes=passes)
    assert all(not call["constrained"] for call in backend.calls)


def test_source_and_edited_are_never_the_same_image(manifest):
    """The fixture's images differ, so the order check above is meaningful."""
    samples = list(read_manifest(manifest))
    for s in samples:
        assert digest(s.source) != digest(s.edited)


def test_repair_sends_the_same_request_constrained(photos):
    """An unparseable answer is regenerated under the grammar from the very same
    images and prompt (only the attempt's seed differs)."""
    backend = ScriptedBackend({"answers": {"sc": "not json", "pq": "not json"},
                               "constrained": {"sc": SC_OK, "pq": PQ_OK}})
    judge = Judge(backend, load_config())
    result = judge.score(photos["coffee"], photos["coffee_blur"], "Blur it")
    assert result.ok and result.repaired
    sent = [(r, c["constrained"]) for c in backend.calls for r in c["requests"]]
    assert sorted((r.kind, constrained) for r, constrained in sent) == [
        ("pq", False), ("pq", True), ("sc", False), ("sc", True)]
    first, = [r for r, constrained in sent if r.kind == "sc" and not constrained]
    repair, = [r for r, constrained in sent if r.kind == "sc" and constrained]
    assert (repair.kind, repair.prompt) == (first.kind, first.prompt) == ("sc", render_sc("Blur it"))
    assert [image_digest(i) for i in repair.images] == [digest(photos["coffee"]), digest(photos["coffee_blur"])]
    assert repair.seed == request_seed(42, "edit", 0, "sc", attempt=1) != first.seed


# -- the backend: what the processor and generate() receive -------------------


class Spy:
    """Wraps a callable, recording each call's arguments and result."""

    def __init__(self, target):
        self._target = target
        self.calls: list[tuple[tuple, dict, object]] = []

    def __call__(self, *args, **kwargs):
        out = self._target(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out

    def __getattr__(self, name):
        return getattr(self._target, name)


@pytest.fixture(scope="module")
def spied(tiny_model):
    """The transformers backend on the tiny model, whose processor keeps
    Qwen3-VL's own defaults (65536..16777216 pixels), so only the judge's
    explicit pixel budget can give the published grid."""
    backend = TransformersBackend.load(str(tiny_model), device="cpu", dtype="float32")
    assert backend.processor.image_processor.size == QWEN3_VL_PROCESSOR_DEFAULTS
    return backend


@pytest.fixture()
def spy(spied, monkeypatch):
    processor, generate = Spy(spied.processor), Spy(spied.model.generate)
    monkeypatch.setattr(spied, "processor", processor)
    monkeypatch.setattr(spied.model, "generate", generate)
    return spied, processor, generate


CHAT_USER = "<|im_start|>user\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
GENERATION_PROMPT = "<|im_end|>\n<|im_start|>assistant\n"

# Hand-computed with the Qwen3-VL rule (sides multiples of 32, pixels within
# 3136..589824, aspect kept): 1200x800 -> 928x608 -> a grid of 58x38 patches;
# 120x80 -> 128x64 -> 8x4. Qwen3-VL's defaults would give 1216x800 and 320x224.
BUDGET_GRIDS = {(1200, 800): [1, 38, 58], (120, 80): [1, 4, 8], (600, 400): [1, 24, 38]}


def test_backend_renders_the_chat_and_applies_the_pixel_budget(spy, photos):
    backend, processor, generate = spy
    coffee = Image.open(photos["coffee"]).convert("RGB")
    large = coffee.resize((1200, 800), Image.Resampling.LANCZOS)  # over the budget
    small = coffee.resize((120, 80), Image.Resampling.LANCZOS)  # under Qwen3-VL's default minimum
    requests = [sc_request(coffee, large, "Make it bigger"), pq_request(small)]
    backend.generate(requests, Generation(max_new_tokens=4), constrained=False)

    (args, kwargs, out), = processor.calls
    assert kwargs["text"] == [
        CHAT_USER + IMAGE + IMAGE + render_sc("Make it bigger") + GENERATION_PROMPT,
        CHAT_USER + IMAGE + render_pq() + GENERATION_PROMPT,
    ]
    assert [image_digest(i) for i in kwargs["images"]] == [image_digest(coffee), image_digest(large), image_digest(small)]
    (_, gen_kwargs, _), = generate.calls
    grids = gen_kwargs["image_grid_thw"].tolist()
    assert grids == [BUDGET_GRIDS[(600, 400)], BUDGET_GRIDS[(1200, 800)], BUDGET_GRIDS[(120, 80)]]
    # each image's placeholder is expanded to its merged patches (2x2 merge)
    pad = backend.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = (gen_kwargs["input_ids"] == pad).sum(dim=1).tolist()
    assert counts == [(38 * 24 + 38 * 58) // 4, 4 * 8 // 4]
    assert gen_kwargs["do_sample"] is False and gen_kwargs["max_new_tokens"] == 4


def test_budget_is_the_configured_one(spy, photos):
    """A smaller --max-pixels gives a smaller grid: the budget comes from the config."""
    backend, processor, generate = spy
    coffee = Image.open(photos["coffee"]).convert("RGB")
    backend.generate([pq_request(coffee)], Generation(max_new_tokens=2, max_pixels=128 * 128), constrained=False)
    (_, gen_kwargs, _), = generate.calls
    t, h, w = gen_kwargs["image_grid_thw"].tolist()[0]
    assert h * 16 * w * 16 <= 128 * 128 and (h, w) == (6, 8)  # 600x400 -> 128x96


def test_api_instruction_is_stripped_like_a_manifests(photos):
    """Judge.score strips surrounding whitespace as the manifest reader does."""
    backend = ScriptedBackend()
    Judge(backend, load_config()).score(photos["coffee"], photos["coffee_blur"], "  Blur it \n")
    sc, = [r for c in backend.calls for r in c["requests"] if r.kind == "sc"]
    assert sc.prompt == render_sc("Blur it")
