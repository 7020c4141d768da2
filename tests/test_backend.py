"""The transformers backend on the tiny random-weight Qwen3-VL: chat template,
batching with left padding, greedy fidelity, constrained decoding."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from spatialreward.backends.transformers_backend import TransformersBackend
from spatialreward.config import Generation
from spatialreward.errors import ModelNotFoundError, ParseError
from spatialreward.parse import parse_pq, parse_sc
from spatialreward.prompts import render_pq, render_sc
from spatialreward.requests import pq_request, sc_request

GEN = Generation(max_new_tokens=48)


@pytest.fixture(scope="module")
def backend(tiny_model):
    return TransformersBackend.load(str(tiny_model), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def images(photos):
    return {name: Image.open(path).convert("RGB") for name, path in photos.items()}


def test_chat_template_renders_published_message_order(backend, images):
    request = sc_request(images["coffee"], images["coffee_gray"], "Make it grayscale")
    text = backend.processor.apply_chat_template(request.messages(), add_generation_prompt=True, tokenize=False)
    # source image, edited image, then the SC prompt, in one user turn
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                           "<|vision_start|><|image_pad|><|vision_end|>" + render_sc("Make it grayscale"))
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    pq = pq_request(images["coffee_gray"])
    text = backend.processor.apply_chat_template(pq.messages(), add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + render_pq()
                    + "<|im_end|>\n<|im_start|>assistant\n")


def test_pixel_budget_is_applied(backend, images):
    """A 600x400 photo under max_pixels 589824 keeps its size rounded to 32s;
    with a budget of 64*64 it is shrunk to fit."""
    request = pq_request(images["coffee"])
    text = backend.processor.apply_chat_template(request.messages(), add_generation_prompt=True, tokenize=False)
    full = backend.processor(text=[text], images=[images["coffee"]], return_tensors="pt",
                             images_kwargs={"size": {"longest_edge": 589824, "shortest_edge": 3136}})
    t, h, w = full["image_grid_thw"][0].tolist()
    assert (h * 16, w * 16) == (384, 608)  # 400x600 rounded to multiples of 32 (round half to even)
    small = backend.processor(text=[text], images=[images["coffee"]], return_tensors="pt",
                              images_kwargs={"size": {"longest_edge": 64 * 64, "shortest_edge": 3136}})
    t, h, w = small["image_grid_thw"][0].tolist()
    assert h * 16 * w * 16 <= 64 * 64


def test_batched_equals_unbatched(backend, images):
    """Left padding: a mixed batch (landscape and portrait, different lengths)
    gives exactly the answers each request gives alone."""
    requests = [
        sc_request(images["coffee"], images["coffee_red_square"], "Add a red square"),
        sc_request(images["astronaut"], images["astronaut_mirror"], "Mirror the photo horizontally, please"),
        sc_request(images["coffee"], images["coffee_blur"], "Blur"),
    ]
    batched = backend.generate(requests, GEN, constrained=False)
    alone = [backend.generate([r], GEN, constrained=False)[0] for r in requests]
    assert [a.text for a in batched] == [a.text for a in alone]
    assert all(a.tokens > 0 for a in batched)


def test_greedy_overrides_the_models_sampling_defaults(backend, images):
    """The tiny model ships do_sample=True like Qwen3-VL; the judge decodes greedily."""
    assert backend.model.generation_config.do_sample is True
    first = backend.generate([pq_request(images["coffee_blur"], seed=1)], GEN, constrained=False)[0].text
    second = backend.generate([pq_request(images["coffee_blur"], seed=2)], GEN, constrained=False)[0].text
    assert first == second


def test_sampling_depends_on_the_requests_own_seed(backend, images):
    sampling = Generation(max_new_tokens=24, temperature=1.0, passes=2)

    def text(seed):
        return backend.generate([pq_request(images["coffee_blur"], seed=seed)], sampling, constrained=False)[0].text

    assert text(1) == text(1)
    assert text(1) != text(99)


def test_sampled_answer_does_not_depend_on_its_batch(backend, images):
    """Each request draws from its own seeded generator: alone or beside other
    requests (a resume shifts batch boundaries), it writes the same answer."""
    sampling = Generation(max_new_tokens=24, temperature=1.0, passes=2)
    target = pq_request(images["coffee_blur"], seed=7)
    alone = backend.generate([target], sampling, constrained=False)[0].text
    others = [pq_request(images["coffee"], seed=8), pq_request(images["astronaut"], seed=9)]
    batched = backend.generate([others[0], target, others[1]], sampling, constrained=False)
    assert batched[1].text == alone
    assert len({a.text for a in batched}) == 3


def test_sampling_leaves_the_process_rng_alone(backend, images):
    """A library user's torch RNG is not reseeded by the judge."""
    import torch

    sampling = Generation(max_new_tokens=8, temperature=1.0, passes=2)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    backend.generate([pq_request(images["coffee"], seed=5)], sampling, constrained=False)
    assert torch.equal(torch.rand(3), expected)


def test_weights_load_straight_onto_the_device(tiny_model, monkeypatch):
    """No full CPU copy first: from_pretrained is told the device (device_map)."""
    import transformers

    seen = {}
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    loaded = TransformersBackend.load(str(tiny_model), device="cpu", dtype="float32")
    assert seen.get("device_map") == "cpu"
    assert next(loaded.model.parameters()).device.type == "cpu"


def test_constrained_answers_parse(backend, images):
    """Under the grammar even random weights give schema-valid, strict JSON that closes in time."""
    gen = Generation(max_new_tokens=160)
    requests = [
        sc_request(images["coffee"], images["coffee_red_square"], "Add a red square"),
        pq_request(images["coffee_red_square"]),
        sc_request(images["astronaut"], images["astronaut_mirror"], "Mirror it"),
    ]
    answers = backend.generate(requests, gen, constrained=True)
    assert all(a.finished for a in answers)
    for request, answer in zip(requests, answers):
        json.loads(answer.text)  # strict JSON, no control characters
        if request.kind == "sc":
            parsed = parse_sc(answer.text)
            assert all(0 <= v <= 1000 for r in parsed.regions for v in r.bbox_2d)
            assert not any(r.clipped for r in parsed.regions)
        else:
            parsed = parse_pq(answer.text)
            assert 0 <= parsed.naturalness <= 25
        # nothing tolerated but what the grammar cannot express (x1 <= x2)
        assert all(n.endswith("corners reordered") for n in parsed.notes), parsed.notes


_REGION = r'\{"id": \d+, "label": "", "bbox_2d": \[\d+, \d+, \d+, \d+\]\}'
_LAYOUT = {
    "sc": re.compile(r'\{"edit_region": \[(' + _REGION + r'(, ' + _REGION + r')*)?\], "reasoning": "", "score": \[\d+, \d+\]\}'),
    "pq": re.compile(r'\{"reasoning": "", "score": \[\d+, \d+\]\}'),
}


def test_constrained_answers_use_the_trained_layout(backend, images):
    """Keys in the trained order, ", " and ": " separators, no other whitespace
    outside strings: {"edit_region": [{"id": 0, "label": "...", "bbox_2d": [...]}],
    "reasoning": "...", "score": [s1, s2]} and {"reasoning": "...", "score": [n, a]}."""
    gen = Generation(max_new_tokens=160)
    requests = [
        sc_request(images["coffee"], images["coffee_blur"], "Blur the photo"),
        pq_request(images["coffee_gray"]),
        sc_request(images["coffee"], images["coffee_red_square"], "Add a red square on the right"),
        pq_request(images["astronaut_mirror"]),
    ]
    answers = backend.generate(requests, gen, constrained=True)
    regions = 0
    for request, answer in zip(requests, answers):
        assert answer.finished
        # Strings hold no quote (the grammar excludes it), so they pair up left to right:
        # blank every value string, keep the keys (the strings followed by ":").
        parts = re.split(r'("[^"]*")', answer.text)
        skeleton = "".join(
            '""' if i % 2 and not parts[i + 1].startswith(":") else part for i, part in enumerate(parts)
        )
        assert _LAYOUT[request.kind].fullmatch(skeleton), answer.text
        regions += skeleton.count('"bbox_2d"')
    assert regions > 0  # the region layout was exercised
def test_unconstrained_random_answer_does_not_parse(backend, images):
    """The random model's free text is not a judgment: this is what `auto` repairs."""
    answer = backend.generate([pq_request(images["coffee"])], GEN, constrained=False)[0]
    with pytest.raises(ParseError) as info:
        parse_pq(answer.text)
    assert info.value.stage == "parse" and info.value.message


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        TransformersBackend.load("SpatialReward/SpatialReward-8B", device="cpu", dtype="float32")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "hf download SpatialReward/SpatialReward-8B" in message
    with pytest.raises(ModelNotFoundError) as info:
        TransformersBackend.load(str(tmp_path / "nowhere"), device="cpu", dtype="float32")
    assert "nowhere" in str(info.value)


def test_local_model_fingerprint_follows_content_not_location(tiny_model, tmp_path):
    from spatialreward.backends.transformers_backend import model_fingerprint

    moved = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(tiny_model, moved)
    assert model_fingerprint(str(moved), None) == model_fingerprint(str(tiny_model), None)
    (moved / "config.json").write_text((moved / "config.json").read_text().replace("64", "65", 1))
    assert model_fingerprint(str(moved), None) != model_fingerprint(str(tiny_model), None)
    assert model_fingerprint("SpatialReward/SpatialReward-8B", None) == "SpatialReward/SpatialReward-8B"
