"""The openai backend against fake OpenAI-compatible servers (tests/fake_openai.py):
what it sends (message layout, images, decoding fields, structured outputs),
how it retries, balances and fails over, and its one-line start-up errors."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, write_jsonl
from fake_openai import FakeOpenAI, decode_image
from spatialreward.backends.openai_backend import EndpointsDown, EngineRequestError, OpenAIBackend
from spatialreward.config import Generation, load_config
from spatialreward.errors import EngineError
from spatialreward.judge import Judge
from spatialreward.pixels import resize_for_model
from spatialreward.prompts import render_pq, render_sc
from spatialreward.requests import pq_request, sc_request
from spatialreward.structured import grammar_for, schema_for

FAST = dict(backoff_s=0.02, max_backoff_s=0.1)


@pytest.fixture()
def server():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture()
def two_servers():
    fakes = [FakeOpenAI().start(), FakeOpenAI().start()]
    yield fakes
    for fake in fakes:
        fake.stop()


@pytest.fixture(scope="module")
def images(photos):
    coffee = Image.open(photos["coffee"]).convert("RGB")  # 600x400
    red = Image.open(photos["coffee_red_square"]).convert("RGB")
    astronaut = Image.open(photos["astronaut"]).convert("RGB")  # 300x512
    return {"source": coffee, "edited": red.resize((1200, 800), Image.Resampling.LANCZOS), "portrait": astronaut}


def load(fake_or_urls, generation=None, **options) -> OpenAIBackend:
    urls = [f.url for f in fake_or_urls] if isinstance(fake_or_urls, list) else [fake_or_urls.url]
    return OpenAIBackend.load("SpatialReward/SpatialReward-8B", generation=generation or Generation(),
                              base_urls=urls, **{**FAST, **options})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- what goes over the wire ----------------------------------------------------


def test_published_layout_lossless_budgeted_images_and_decoding(server, images):
    backend = load(server)
    gen = Generation(max_new_tokens=512)
    sc = sc_request(images["source"], images["edited"], "Add a red square", seed=1234)
    pq = pq_request(images["portrait"], seed=99)
    answers = backend.generate([sc, pq], gen, constrained=False)
    assert [a.text[:2] for a in answers] == ['{"', '{"'] and all(a.finished and a.tokens == 17 for a in answers)

    bodies = sorted(server.chat_requests(), key=lambda b: len(b["messages"][0]["content"]), reverse=True)
    assert len(bodies) == 2
    for body, request in zip(bodies, (sc, pq)):
        [message] = body["messages"]
        assert message["role"] == "user"
        parts = message["content"]
        # images first, in request order (SC: source then edited), the text last
        assert [p["type"] for p in parts] == ["image_url"] * len(request.images) + ["text"]
        assert parts[-1]["text"] == request.prompt
        for part, image in zip(parts, request.images):
            sent = decode_image(part["image_url"]["url"]).convert("RGB")
            expected = resize_for_model(image, gen)
            assert sent.size == expected.size
            assert np.array_equal(np.asarray(sent), np.asarray(expected)), "lossless: the exact resized pixels"
        assert body["temperature"] == 0 and "temperature" in body
        assert (body["top_p"], body["top_k"], body["max_tokens"]) == (0.9, 20, 512)
        assert body["seed"] == request.seed
        assert body["model"] == "served-model" and body["n"] == 1 and body["stream"] is False
        assert body["skip_special_tokens"] is False
        assert "stop" not in body and "stop_token_ids" not in body  # the chat template's own stops
        assert "structured_outputs" not in body and "response_format" not in body
    assert bodies[0]["messages"][0]["content"][-1]["text"] == render_sc("Add a red square")
    assert bodies[1]["messages"][0]["content"][-1]["text"] == render_pq()
    # 600x400 -> 608x384, 1200x800 -> 928x608, 300x512 -> 288x512 (sides multiples of 32)
    sizes = [decode_image(p["image_url"]["url"]).size for b in bodies for p in b["messages"][0]["content"][:-1]]
    assert sizes == [(608, 384), (928, 608), (288, 512)]


def test_sampling_sends_temperature_and_each_requests_seed(server, images):
    backend = load(server)
    gen = Generation(temperature=0.7, top_p=0.8, top_k=5, passes=2)
    backend.generate([pq_request(images["portrait"], seed=7)], gen, constrained=False)
    backend.generate([pq_request(images["portrait"], seed=8)], gen, constrained=False)
    bodies = server.chat_requests()
    assert [(b["temperature"], b["top_p"], b["top_k"], b["seed"]) for b in bodies] == [(0.7, 0.8, 5, 7), (0.7, 0.8, 5, 8)]


def test_the_grammar_sent_is_the_transformers_paths():
    """No free whitespace, strict: what TransformersBackend compiles from the schema."""
    import xgrammar as xgr

    def ebnf(any_whitespace):
        schema = json.dumps(schema_for("sc", 300))
        return str(xgr.Grammar.from_json_schema(schema, any_whitespace=any_whitespace, strict_mode=True))

    text = grammar_for("sc", 300)
    assert text == ebnf(False) != ebnf(True)
    assert grammar_for("pq", 300) != text


@pytest.mark.parametrize("field", ["vllm", "response_format"])
def test_constrained_requests_carry_the_schema(server, images, field):
    backend = load(server, structured_field=field)
    gen = Generation(max_new_tokens=300)
    backend.generate([sc_request(images["source"], images["edited"], "x"), pq_request(images["portrait"])], gen,
                     constrained=True)
    sc_body, pq_body = sorted(server.chat_requests(), key=lambda b: len(b["messages"][0]["content"]), reverse=True)
    for body, kind in ((sc_body, "sc"), (pq_body, "pq")):
        if field == "vllm":
            assert body["structured_outputs"] == {"grammar": grammar_for(kind, 300)}
            assert "response_format" not in body
        else:
            assert body["response_format"] == {"type": "json_schema", "json_schema": {
                "name": f"spatialreward_{kind}", "schema": schema_for(kind, 300), "strict": True}}
            assert "structured_outputs" not in body


def test_identity_names_the_backend_and_served_model(server):
    backend = load(server)
    assert (backend.fingerprint, backend.dtype, backend.max_batch, backend.concurrency) == \
        ("openai:served-model", "server", 1, 32)
    config = load_config()
    assert Judge(backend, config).judge_hash != config.judge_hash(dtype="bfloat16", prompts="x", model="served-model")


# -- retries, timeouts, balancing, failover ---------------------------------------


def test_retries_with_backoff_on_503_and_429_then_success(server, images):
    backend = load(server, backoff_s=0.1, max_backoff_s=1.0)
    server.faults.extend([503, ("status", 429, {"Retry-After": "0"}), 502])
    start = time.monotonic()
    [answer] = backend.generate([pq_request(images["portrait"])], Generation(), constrained=False)
    elapsed = time.monotonic() - start
    assert answer.text.startswith('{"reasoning"')
    assert len(server.chat_requests()) == 4
    # backoff 0.1, 0.2, 0.4 s (x0.75..1.25 jitter) before the three retries
    assert elapsed >= 0.7 * 0.75


def test_retries_are_bounded(server, images):
    backend = load(server, retries=2, dead_after=100)
    server.faults.extend([500] * 10)
    with pytest.raises(EngineRequestError, match="HTTP 500.*gave up after 3 attempts"):
        backend.generate([pq_request(images["portrait"])], Generation(), constrained=False)
    assert len(server.chat_requests()) == 3


def test_a_refused_request_is_not_retried(server, images):
    backend = load(server)
    server.faults.append(400)
    with pytest.raises(EngineRequestError, match="refused the request.*HTTP 400"):
        backend.generate([pq_request(images["portrait"])], Generation(), constrained=False)
    assert len(server.chat_requests()) == 1


def test_request_timeout(server, images):
    backend = load(server, request_timeout=0.5)
    server.faults.append(("hang", 3))
    start = time.monotonic()
    with pytest.raises(EngineRequestError, match="no answer within 0.5 s"):
        backend.generate([pq_request(images["portrait"])], Generation(), constrained=False)
    assert time.monotonic() - start < 2.5


def test_idle_endpoints_take_turns(two_servers, images):
    backend = load(two_servers)
    for _ in range(10):
        backend.generate([pq_request(images["portrait"])], Generation(), constrained=False)
    assert [len(f.chat_requests()) for f in two_servers] == [5, 5]


def test_least_outstanding_requests_balance(two_servers, images):
    """A slow endpoint keeps requests in flight, so the fast one takes most;
    each gets at most --concurrency at once."""
    slow, fast = two_servers
    slow.delay_s, fast.delay_s = 0.5, 0.02
    backend = load(two_servers, concurrency=4)
    request = pq_request(Image.new("RGB", (64, 64)))
    backend.generate([request] * 40, Generation(), constrained=False)
    served = [len(f.chat_requests()) for f in two_servers]
    # round-robin would give 20 and 20; least outstanding measured 5-6 and 34-35
    assert sum(served) == 40 and served[1] >= 3 * served[0], served
    assert slow.max_in_flight <= 4 and fast.max_in_flight <= 4


def test_concurrent_generate_calls_are_thread_safe(server, images):
    server.delay_s = 0.05
    backend = load(server, concurrency=8)
    request = pq_request(Image.new("RGB", (64, 64)))
    results, errors = [], []

    def work():
        try:
            results.extend(backend.generate([request], Generation(), constrained=False))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    assert server.max_in_flight > 1
    assert all(e.outstanding == 0 for e in backend.pool.endpoints)


def test_a_dead_endpoint_leaves_the_rotation_and_comes_back_when_a_probe_answers(two_servers, images):
    """Down on a connection failure; back as soon as its probe (GET /models)
    answers, long before the cool-down (30 s) would have let it in."""
    import asyncio

    a, b = two_servers
    backend = load(two_servers, cooldown_s=30)
    request = pq_request(Image.new("RGB", (64, 64)))
    gen = Generation()

    async def main():
        a.stop()
        for _ in range(6):
            await backend.agenerate(request, gen, constrained=False)  # all succeed, on b
        assert len(b.chat_requests()) == 6
        assert backend.pool.live() == [backend.pool.endpoints[1]]
        a.start()  # same port
        deadline = time.monotonic() + 5
        while backend.pool.live() != backend.pool.endpoints and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert backend.pool.live() == backend.pool.endpoints, "back in the rotation once its probe answered"
        for _ in range(4):
            await backend.agenerate(request, gen, constrained=False)
        await backend.aclose()

    asyncio.run(main())
    assert len(a.chat_requests(probes=False)) >= 1


def test_one_sick_request_fails_alone_and_the_endpoint_stays(server, images):
    """The same request failing (HTTP 500 each time) while others succeed fails
    that request only: the only endpoint never leaves the rotation."""
    import asyncio

    backend = load(server, retries=2, dead_after=3)
    gen = Generation()
    poison = pq_request(Image.new("RGB", (64, 64), (255, 0, 0)), seed=666)
    fine = [pq_request(Image.new("RGB", (64, 64)), seed=k) for k in range(12)]
    server.fail_when = lambda body: body.get("seed") == 666

    async def main():
        results = await asyncio.gather(*(backend.agenerate(r, gen, constrained=False) for r in [poison, *fine]),
                                       return_exceptions=True)
        await backend.aclose()
        return results

    for _ in range(3):
        results = asyncio.run(main())
        assert isinstance(results[0], EngineRequestError) and "HTTP 500" in str(results[0])
        assert all(not isinstance(r, Exception) for r in results[1:]), results[1:]
        assert backend.pool.live() == backend.pool.endpoints


def test_several_endpoints_one_down_at_start_starts_and_names_it(server, caplog):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend.load("SpatialReward/SpatialReward-8B", generation=Generation(),
                                 base_urls=[server.url, dead], **FAST)
    assert backend.pool.live() == [backend.pool.endpoints[0]]
    named = [r.getMessage() for r in caplog.records if dead in r.getMessage()]
    assert len(named) == 1 and "cannot reach" in named[0]
    [answer] = backend.generate([pq_request(Image.new("RGB", (64, 64)))], Generation(), constrained=False)
    assert answer.finished
    with pytest.raises(EngineError, match="cannot reach"):  # a single endpoint down is still a start-up error
        OpenAIBackend.load("SpatialReward/SpatialReward-8B", generation=Generation(), base_urls=[dead], **FAST)


def test_every_endpoint_dead_fails_the_request_and_the_judge_records_a_model_error(server, photos):
    backend = load(server, cooldown_s=60)
    server.stop()
    with pytest.raises((EndpointsDown, EngineRequestError)):
        backend.generate([pq_request(Image.new("RGB", (64, 64)))], Generation(), constrained=False)
    with pytest.raises(EndpointsDown, match="no endpoint is up"):  # now at once: it is out of the rotation
        backend.generate([pq_request(Image.new("RGB", (64, 64)))], Generation(), constrained=False)
    result = Judge(backend, load_config()).score(photos["coffee"], photos["coffee_blur"], "Blur it")
    assert not result.ok and result.error.stage == "model" and result.reward is None
    assert result.to_record()["status"] == "error"


# -- start-up checks: one line each -----------------------------------------------


def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=f"cannot reach the server at {url}.*--base-url"):
        OpenAIBackend.load("m", base_urls=[url])


def test_model_not_served_lists_what_is():
    fake = FakeOpenAI(models={"alpha": 8192, "beta": 8192}).start()
    try:
        with pytest.raises(EngineError, match=r"does not serve model 'my/model' \(it serves: alpha, beta\)"):
            OpenAIBackend.load("my/model", base_urls=[fake.url])
        with pytest.raises(EngineError, match=r"does not serve model 'gamma' \(it serves: alpha, beta\).*--served-model"):
            OpenAIBackend.load("my/model", base_urls=[fake.url], served_model="gamma")
        # the default model and several served: which one is ambiguous
        with pytest.raises(EngineError, match="it serves: alpha, beta"):
            OpenAIBackend.load("SpatialReward/SpatialReward-8B", base_urls=[fake.url])
        assert OpenAIBackend.load("my/model", base_urls=[fake.url], served_model="beta").served_model == "beta"
        assert OpenAIBackend.load("alpha", base_urls=[fake.url]).served_model == "alpha"
    finally:
        fake.stop()


def test_max_model_len_too_small():
    fake = FakeOpenAI(models={"m": 4096}).start()
    try:
        # 2 x 576 image tokens + 700 + 4096 new tokens = 5948 > 4096
        with pytest.raises(EngineError, match=r"max model length of 4096 .* needs up to 5948 .*--max-model-len 5948 "
                                              r"or more, or lower --max-pixels / --max-new-tokens"):
            OpenAIBackend.load("m", base_urls=[fake.url], generation=Generation())
        assert OpenAIBackend.load("m", base_urls=[fake.url], generation=Generation(max_new_tokens=512))
    finally:
        fake.stop()


def test_image_limit_below_two():
    fake = FakeOpenAI(limit_images=1).start()
    try:
        with pytest.raises(EngineError, match=r"takes at most 1 image\(s\) per prompt, but SC requests send 2: "
                                              r"restart the server with --limit-mm-per-prompt"):
            OpenAIBackend.load("served-model", base_urls=[fake.url])
    finally:
        fake.stop()


def test_server_that_would_resize_budgeted_images():
    """vLLM's default for Qwen3-VL enlarges images under 65536 pixels: the
    published minimum (3136) would not hold, whatever we send."""
    fake = FakeOpenAI(min_pixels=65536, max_pixels=16777216).start()
    try:
        with pytest.raises(EngineError, match=r"resizes images that are already inside the pixel budget.*"
                                              r"--mm-processor-kwargs '\{\"size\": \{\"shortest_edge\": 3136, "
                                              r"\"longest_edge\": 589824\}\}'"):
            OpenAIBackend.load("served-model", base_urls=[fake.url])
    finally:
        fake.stop()


def test_api_key(monkeypatch):
    fake = FakeOpenAI(api_key="s3cret").start()
    try:
        monkeypatch.delenv("SR_TEST_KEY", raising=False)
        with pytest.raises(EngineError, match="--api-key-env SR_TEST_KEY: the environment variable SR_TEST_KEY is not set"):
            OpenAIBackend.load("m", base_urls=[fake.url], api_key_env="SR_TEST_KEY")
        with pytest.raises(EngineError, match="HTTP 401.*--api-key-env"):
            OpenAIBackend.load("m", base_urls=[fake.url])
        monkeypatch.setenv("SR_TEST_KEY", "s3cret")
        backend = OpenAIBackend.load("served-model", base_urls=[fake.url], api_key_env="SR_TEST_KEY")
        backend.generate([pq_request(Image.new("RGB", (64, 64)))], Generation(), constrained=False)
        assert fake.auth_headers[-1] == "Bearer s3cret"
    finally:
        fake.stop()


def test_base_url_forms(server):
    bare = server.url.removesuffix("/v1")
    assert [e.url for e in load([server]).pool.endpoints] == [server.url]
    backend = OpenAIBackend.load("SpatialReward/SpatialReward-8B", base_urls=[bare + "/"])
    assert [e.url for e in backend.pool.endpoints] == [server.url]


# -- the command line -----------------------------------------------------------


@pytest.fixture()
def manifest(photos, tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [
        {"id": "red", "source": str(photos["coffee"]), "edited": str(photos["coffee_red_square"]),
         "instruction": "Add a red square"},
        {"id": "mirror", "source": str(photos["astronaut"]), "edited": str(photos["astronaut_mirror"]),
         "instruction": "Mirror the photo"},
    ])


def test_cli_judges_through_a_server(server, manifest, tmp_path):
    out = tmp_path / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", server.url,
                   "--concurrency", "4", "--request-timeout", "30", "--served-model", "served-model", "-q")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert len(server.chat_requests()) == 4


def test_cli_model_asked_for_must_be_served(server, manifest, tmp_path):
    """--model given and not served: exit 3 listing what is served, nothing judged;
    without --model the one served model judges (and is named in the records)."""
    out = tmp_path / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", server.url,
                   "--model", "SpatialReward/SpatialReward-8B", "-q")
    assert proc.returncode == 3, proc.stderr
    assert "does not serve model 'SpatialReward/SpatialReward-8B' (it serves: served-model)" in proc.stderr
    assert not server.chat_requests() and not (out.exists() and out.read_text().strip())
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", server.url, "-q")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model"] for r in records} == {"served-model"}


@pytest.mark.parametrize("args, message", [
    (["--backend", "openai"], "needs the server: --base-url"),
    (["--backend", "transformers", "--base-url", "http://127.0.0.1:9/v1"],
     "--base-url does not apply to --backend transformers (only to --backend openai)"),
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--tensor-parallel-size", "2"],
     "--tensor-parallel-size does not apply to --backend openai (only to --backend vllm)"),
    (["--backend", "vllm", "--concurrency", "8"], "--concurrency does not apply to --backend vllm"),
])
def test_cli_usage_errors(manifest, args, message):
    proc = run_cli("judge", manifest, *args, "-q")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_cli_startup_error_is_one_line_exit_3(manifest, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = run_cli("judge", manifest, "--backend", "openai", "--base-url", url, "-q")
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach the server at {url}"), proc.stderr
    monkeypatch.delenv("SR_NOT_SET", raising=False)
    proc = run_cli("judge", manifest, "--backend", "openai", "--base-url", url, "--api-key-env", "SR_NOT_SET", "-q")
    assert proc.returncode == 3
    assert proc.stderr.strip() == ("Error: --api-key-env SR_NOT_SET: the environment variable SR_NOT_SET is not set "
                                   "(export it with the server's API key)")


def test_check_takes_the_engine_flags(server, photos):
    proc = run_cli("check", photos["coffee"], photos["coffee_red_square"], "Add a red square",
                   "--backend", "openai", "--base-url", server.url, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok"
