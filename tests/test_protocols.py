"""The published protocols: eval (the evaluation scripts') and reward-server
(the released RL reward server's), byte for byte on the wire and through the
transformers processor; several source images with the multi-image prompt;
the protocol in the config, the judge hash and the server's /v1/info."""

from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from conftest import REFERENCE, read_jsonl, run_cli, write_jsonl
from fake_openai import FakeOpenAI, decode_image
from spatialreward.config import Generation, load_config
from spatialreward.images import load_image
from spatialreward.judge import Judge
from spatialreward.manifest import read_manifest
from spatialreward.pixels import qwen_vl_utils_resize, qwen_vl_utils_size, resize_for_model
from spatialreward.prompts import render_pq, render_sc
from spatialreward.testing.scripted import ScriptedBackend, image_digest

REWARD_SERVER_SC_SHA256 = "e9fd906ed3b2f21ae26d61a8721290cc9a627632dae053d5cfd7d6556a578bd1"
MULTI_IMAGE_SC_SHA256 = "d84f521bb815fad568ae167ff75f2e8da62989e7e3ef944cdd5be1b36f961511"
EVAL_SC_SHA256 = "d854ce9d64d1241dbf00a023e6441c176bfea125deeb63e2854b79f1dc326e57"
MULTI_INSTRUCTION = "Put the cat from the second image on the sofa"
QWEN_VL_UTILS = {"factor": 28, "min_pixels": 3136, "max_pixels": 12845056}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_reward_server_sc_prompt_golden_hash():
    text = render_sc("Remove the dog", "reward-server")
    assert sha256(text) == REWARD_SERVER_SC_SHA256
    assert text.endswith("Editing instruction: \nRemove the dog")  # no final newline
    assert "from scale 0 to 25: \n" in text and "overediting.\nSPECIAL TOKENS" in text
    assert render_pq("reward-server") == render_pq()  # the same PQ prompt


def test_multi_image_sc_prompt_golden_hash():
    text = render_sc(MULTI_INSTRUCTION, "eval", 2)
    assert sha256(text) == MULTI_IMAGE_SC_SHA256
    assert "The first 3 images are" in render_sc("x", "eval", 3)
    assert sha256(render_sc("Remove the dog", "eval", 1)) == EVAL_SC_SHA256  # one source: the single-image prompt
    assert render_sc("x", "reward-server", 3) == render_sc("x", "reward-server")  # no multi-image prompt there


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is not beside this checkout")
def test_new_prompts_match_the_reference_files_byte_for_byte():
    assert render_sc("Remove the dog", "reward-server").encode() == \
        (REFERENCE / "sc_prompt.reward_server.rendered.example.txt").read_bytes()
    assert render_sc(MULTI_INSTRUCTION, "eval", 2).encode() == \
        (REFERENCE / "sc_prompt.multi_image.rendered.example.txt").read_bytes()


def test_protocol_defaults_apply_only_where_nothing_was_set(tmp_path):
    config = load_config(overrides={"protocol": "reward-server"})
    assert (config.generation.max_new_tokens, config.generation.min_pixels, config.generation.max_pixels) == \
        (512, 65536, 16777216)
    assert load_config(overrides={"protocol": "reward-server", "generation": {"max_new_tokens": 64}}) \
        .generation.max_new_tokens == 64
    file = tmp_path / "c.yaml"
    file.write_text("protocol: reward-server\ngeneration:\n  max_new_tokens: 100\n")
    assert load_config(file).generation.max_new_tokens == 100
    assert load_config().generation.max_new_tokens == 4096 and load_config().protocol == "eval"
    with pytest.raises(Exception, match="unknown protocol 'nope'"):
        load_config(overrides={"protocol": "nope"})


def test_judge_hash_names_the_protocol():
    backend = ScriptedBackend()
    hashes = {name: Judge(backend, load_config(overrides={"protocol": name, "generation": {"max_new_tokens": 512}})
                          ).judge_hash for name in ("eval", "reward-server")}
    assert hashes["eval"] != hashes["reward-server"]


def test_qwen_vl_utils_resize_rule():
    # 600x400: sides rounded to multiples of 28 -> 588x392 (inside 3136..12845056)
    assert qwen_vl_utils_size(400, 600, **QWEN_VL_UTILS) == (392, 588)
    assert qwen_vl_utils_size(10, 10, **QWEN_VL_UTILS) == (56, 56)  # below the minimum: enlarged
    assert qwen_vl_utils_size(14, 2000, **QWEN_VL_UTILS)[0] == 28  # a side is never rounded to 0
    h, w = qwen_vl_utils_size(6000, 4000, **QWEN_VL_UTILS)
    assert h * w <= 12845056 and h % 28 == 0 and w % 28 == 0


@pytest.fixture()
def engine_at_defaults():
    """An engine serving the model's processor defaults (no --mm-processor-kwargs), as the released server did."""
    fake = FakeOpenAI(models={"served-model": 100_000}, min_pixels=65536, max_pixels=16777216).start()
    yield fake
    fake.stop()


def test_reward_server_protocol_on_the_wire(engine_at_defaults, photos, tmp_path):
    """SC: the released server's text byte for byte; images as qwen_vl_utils then
    the processor's defaults make them; PQ the same prompt as eval; 512 tokens."""
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "d", "source": str(photos["coffee"]), "edited": str(photos["coffee_red_square"]),
         "instruction": "Remove the dog"}])
    out = tmp_path / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", engine_at_defaults.url,
                   "--protocol", "reward-server", "-q")
    assert proc.returncode == 0, proc.stderr
    sc, pq = sorted(engine_at_defaults.chat_requests(), key=lambda b: len(b["messages"][0]["content"]), reverse=True)
    text = sc["messages"][0]["content"][-1]["text"]
    assert sha256(text) == REWARD_SERVER_SC_SHA256
    assert pq["messages"][0]["content"][-1]["text"] == render_pq()
    assert sc["max_tokens"] == pq["max_tokens"] == 512 and sc["temperature"] == 0
    generation = Generation(min_pixels=65536, max_pixels=16777216)
    for part, photo in zip(sc["messages"][0]["content"][:2], ("coffee", "coffee_red_square")):
        sent = decode_image(part["image_url"]["url"])
        expected = resize_for_model(qwen_vl_utils_resize(load_image(photos[photo]), **QWEN_VL_UTILS), generation)
        assert sent.size == expected.size == (576, 384)
        assert image_digest(sent.convert("RGB")) == image_digest(expected)
    assert read_jsonl(out)[0]["status"] == "ok"


def test_eval_protocol_on_the_wire_is_unchanged(photos, tmp_path):
    fake = FakeOpenAI().start()
    try:
        manifest = write_jsonl(tmp_path / "m.jsonl", [
            {"id": "d", "source": str(photos["coffee"]), "edited": str(photos["coffee_red_square"]),
             "instruction": "Remove the dog"}])
        proc = run_cli("judge", manifest, "-o", tmp_path / "s.jsonl", "--backend", "openai", "--base-url", fake.url,
                       "--served-model", "served-model", "-q")
        assert proc.returncode == 0, proc.stderr
        texts = {b["messages"][0]["content"][-1]["text"] for b in fake.chat_requests()}
        assert sha256(render_sc("Remove the dog")) == EVAL_SC_SHA256 and render_sc("Remove the dog") in texts
    finally:
        fake.stop()


def test_reward_server_protocol_through_the_transformers_processor(tiny_model, photos, monkeypatch):
    from test_fidelity import CHAT_USER, GENERATION_PROMPT, IMAGE, Spy

    from spatialreward.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.load(str(tiny_model), device="cpu", dtype="float32")
    processor, generate = Spy(backend.processor), Spy(backend.model.generate)
    monkeypatch.setattr(backend, "processor", processor)
    monkeypatch.setattr(backend.model, "generate", generate)
    config = load_config(overrides={"protocol": "reward-server", "batch_size": 2,
                                    "generation": {"max_new_tokens": 2, "structured": "off"}})
    with Judge(backend, config) as judge:
        judge.score(photos["coffee"], photos["coffee_red_square"], "Remove the dog")
    texts = [t for _, kwargs, _ in processor.calls for t in kwargs["text"]]
    sc_text = CHAT_USER + IMAGE + IMAGE + render_sc("Remove the dog", "reward-server") + GENERATION_PROMPT
    assert sc_text in texts and sha256(render_sc("Remove the dog", "reward-server")) == REWARD_SERVER_SC_SHA256
    images = [i for _, kwargs, _ in processor.calls for i in kwargs["images"]]
    assert {i.size for i in images} == {(588, 392)}  # qwen_vl_utils' resize before the processor
    assert all(kwargs["images_kwargs"]["size"] == {"longest_edge": 16777216, "shortest_edge": 65536}
               for _, kwargs, _ in processor.calls)
    grids = [g for _, kwargs, _ in generate.calls for g in kwargs["image_grid_thw"].tolist()]
    assert grids and all(g == [1, 24, 36] for g in grids)  # 588x392 -> the processor's 576x384


@pytest.mark.parametrize("protocol", ["eval", "reward-server"])
def test_three_sources_in_order_then_the_edited_image(photos, tmp_path, protocol):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "multi", "source": [str(photos["coffee"]), str(photos["astronaut"]), str(photos["coffee_gray"])],
         "edited": str(photos["coffee_red_square"]), "instruction": "Fuse them"},
        {"id": "single", "source": [str(photos["astronaut"])], "edited": str(photos["astronaut_mirror"]),
         "instruction": "Mirror it"}])
    backend = ScriptedBackend()
    generation = {"max_new_tokens": 512}
    with Judge(backend, load_config(overrides={"protocol": protocol, "generation": generation})) as judge:
        results = list(judge.score_many(read_manifest(manifest)))
    assert [r.ok for r in results] == [True, True]
    sc = {r.prompt: r for c in backend.calls for r in c["requests"] if r.kind == "sc"}
    multi = sc[render_sc("Fuse them", protocol, 3)]
    prepared = (lambda p: qwen_vl_utils_resize(load_image(p), **QWEN_VL_UTILS)) if protocol == "reward-server" \
        else load_image
    assert [image_digest(i) for i in multi.images] == [
        image_digest(prepared(photos[name])) for name in ("coffee", "astronaut", "coffee_gray", "coffee_red_square")]
    if protocol == "eval":
        assert "The first 3 images are the original input images" in multi.prompt
    single = sc[render_sc("Mirror it", protocol)]
    assert len(single.images) == 2
    record = results[0].to_record()
    assert record["source"] == [str(photos[n]) for n in ("coffee", "astronaut", "coffee_gray")]


def test_results_of_two_protocols_never_resume_into_each_other(photos, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({}))
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": "Blur"}])
    out = tmp_path / "s.jsonl"
    base = ["judge", manifest, "-o", out, "--backend", "scripted", "--model", script, "-q"]
    assert run_cli(*base).returncode == 0
    proc = run_cli(*base, "--protocol", "reward-server")
    assert proc.returncode == 3 and "--overwrite" in proc.stderr, proc.stderr
