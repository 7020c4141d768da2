"""`spatialreward serve` as a real process on loopback: the released client's
call shape, typed results, per-item errors, 401/411/413/415/422/503, /ready
on engine failure, SIGTERM drains, and ordering under load (thousands of items
from concurrent clients, each result checkable: the echo scripted backend)."""

from __future__ import annotations

import base64
import json
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import FAST, run_cli
from serve_helpers import expected_echo, item_image, png_bytes, start

from spatialreward.client import AsyncRewardClient, ItemFailed, RewardClient, RewardError, RewardResult


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("echo"), {"echo": True})
    yield server
    assert server.stop() == 0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the released client's call shape ---------------------------------------------------

def test_released_evaluate_call_shape(echo_server, tmp_path):
    edited = [item_image(k) for k in range(5)]
    paths = []
    for k, image in enumerate(edited):  # paths: sent as the file's bytes
        paths.append(tmp_path / f"e{k}.png")
        image.save(paths[-1])
    sources = [[item_image(100)] for _ in range(5)]  # a list of source images per sample, as released
    metas = [{"instruction": f"item {k}", "tag": "t", "step": k} for k in range(5)]
    with RewardClient(proxy_host="127.0.0.1", proxy_port=echo_server.port) as client:
        assert client.ping()
        scores, rewards, reasoning, meta_data = client.evaluate(sources, paths, metas)
    assert len(scores) == len(rewards) == len(reasoning) == len(meta_data) == 5
    for k in range(5):
        want = expected_echo(k, edited[k])
        assert rewards[k] == pytest.approx(want["reward"])
        assert scores[k] == (1.0 if rewards[k] >= 0.5 else 0.0)
        assert meta_data[k] == {**metas[k], "original_index": k}
        assert "echo" in reasoning[k]
    assert RewardClient(echo_server.url).evaluate([], [], []) == ([], [], [], [])


def bomb_png() -> bytes:
    """A small PNG file of 20000 x 20000 pixels: refused from its header, never decoded."""
    from PIL import Image

    return png_bytes(Image.new("1", (20000, 20000)))


def test_typed_results_and_a_bad_image_fails_only_its_item(echo_server):
    good = png_bytes(item_image(3))
    items = [
        {"id": "ok-1", "source": good, "edited": item_image(1), "instruction": "item 1", "meta": {"a": 1}},
        {"id": "bad-bytes", "source": good, "edited": b"not an image at all", "instruction": "item 2"},
        {"id": "gif", "source": good, "edited": b"GIF89a" + b"\0" * 20, "instruction": "item 3"},
        {"id": "truncated", "source": good, "edited": png_bytes(item_image(4))[:60], "instruction": "item 4"},
        {"id": "ok-5", "source": good, "edited": item_image(5), "instruction": "item 5"},
        {"id": "bomb", "source": good, "edited": bomb_png(), "instruction": "item 6"},
    ]
    with RewardClient(echo_server.url) as client:
        results = client.score(items, want=("regions", "reasoning", "raw"))
    assert [r.id for r in results] == [i["id"] for i in items]
    assert all(isinstance(r, RewardResult) for r in results)
    assert [r.status for r in results] == ["ok", "error", "error", "error", "ok", "error"]
    assert "decompression bomb" in results[5].error["message"]
    for r in results[1:4]:
        assert r.reward is None and r.score is None and r.error["stage"] == "input", r
    assert "PNG, JPEG or WebP" in results[2].error["message"]
    ok = results[0]
    assert ok.reward == pytest.approx(expected_echo(1, item_image(1))["reward"])
    assert ok.meta == {"a": 1} and ok.regions == [] and ok.raw["sc"] and ok.reasoning["pq"] == "echo"
    # the fields of the record `judge` writes (without the images)
    for key in ("status", "error", "reward", "overall", "sc", "pq", "scores", "repaired", "edited_size",
                "model", "judge_hash", "config_hash", "version"):
        assert key in ok.record
    with RewardClient(echo_server.url, on_error="raise") as client:
        with pytest.raises(ItemFailed, match="bad-bytes"):
            client.score(items[:2])


def test_async_client_and_chunks(echo_server):
    import asyncio

    async def go():
        async with AsyncRewardClient(echo_server.url, chunk_size=3) as client:
            assert await client.ping()
            return await client.score([(item_image(50), item_image(k), f"item {k}") for k in range(10)])

    results = asyncio.run(go())
    assert [r.index for r in results] == list(range(10))
    assert [r.reward for r in results] == [pytest.approx(expected_echo(k, item_image(k))["reward"]) for k in range(10)]


def test_info_ready_metrics(echo_server):
    info = httpx.get(echo_server.url + "/v1/info").json()
    assert {"model", "judge_hash", "config_hash", "aggregation", "limits", "threshold"} <= set(info)
    assert httpx.get(echo_server.url + "/ready").json() == {"ready": True, "reason": None}
    assert httpx.get(echo_server.url + "/ping").json() == {"status": "ok"}
    answer = httpx.get(echo_server.url + "/metrics")
    text = answer.text
    for name in ("spatialreward_requests_total", "spatialreward_items_total", "spatialreward_queue_depth",
                 "spatialreward_in_flight_requests", "spatialreward_request_seconds_bucket",
                 "spatialreward_generated_tokens_total", "spatialreward_cancelled_items_total",
                 "spatialreward_idempotent_replays_total", "spatialreward_admitted_pixels",
                 "spatialreward_prepare_queue_depth"):
        assert name in text
    from prometheus_client import CONTENT_TYPE_LATEST

    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    assert info["limits"]["max_pixels_in_flight"] == 512_000_000


# -- 4xx paths ------------------------------------------------------------------------------

def test_422_unknown_fields_and_bad_types(echo_server):
    item = {"source": b64(png_bytes(item_image(1))), "edited": b64(png_bytes(item_image(2))), "instruction": "x"}
    for body in ({"items": [item], "extra": 1}, {"items": [{**item, "colour": "red"}]}, {"items": []},
                 {"items": [{**item, "instruction": ""}]}, {"items": [item], "return": ["everything"]},
                 {"items": [{**item, "instruction": "x" * 5000}]}):
        assert httpx.post(echo_server.url + "/v1/rewards", json=body).status_code == 422, body
    answer = httpx.post(echo_server.url + "/v1/rewards", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert answer.status_code == 422


def test_411_without_content_length(echo_server):
    def chunks():
        yield b'{"items": []}'

    answer = httpx.post(echo_server.url + "/v1/rewards", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 411


def test_the_answer_matches_the_documented_model(echo_server):
    from spatialreward.serve.protocol import RewardResponse

    good = b64(png_bytes(item_image(1)))
    body = {"items": [{"id": "x", "source": good, "edited": good, "instruction": "item 1"},
                      {"source": good, "edited": b64(b"junk"), "instruction": "item 2"}], "return": ["regions"]}
    answer = RewardResponse.model_validate(httpx.post(echo_server.url + "/v1/rewards", json=body).json())
    assert [(r.id, r.index, r.status) for r in answer.results] == [("x", 0, "ok"), (None, 1, "error")]
    assert answer.results[1].error.stage == "input" and answer.results[0].score in (0.0, 1.0)


def test_a_shared_source_is_decoded_once_and_a_bad_one_fails_its_items(echo_server):
    with RewardClient(echo_server.url) as client:
        results = client.score([(item_image(7), item_image(k), f"item {k}") for k in range(3)]
                               + [(b"\x89PNG\r\n\x1a\nbroken", item_image(k), f"item {k}") for k in range(3, 5)]
                               + [(item_image(8), item_image(5), "item 5")])
    assert [r.reward for r in results[:3]] == [pytest.approx(expected_echo(k, item_image(k))["reward"]) for k in range(3)]
    assert [r.error["stage"] for r in results[3:5]] == ["input", "input"]
    assert "source" in results[3].error["message"] and results[5].ok


# -- several source images per item ----------------------------------------------------------

def test_an_item_takes_a_list_of_sources(echo_server):
    """``source``: one base64 image or a list of 1 to 8 in order; the result says how many."""
    sources = [b64(png_bytes(item_image(k))) for k in (60, 61, 62)]
    edited = [b64(png_bytes(item_image(k))) for k in range(4)]
    body = {"items": [
        {"id": "three", "source": sources, "edited": edited[0], "instruction": "item 0"},
        {"id": "one", "source": sources[0], "edited": edited[1], "instruction": "item 1"},
        {"id": "listed-one", "source": sources[:1], "edited": edited[2], "instruction": "item 2"},
        {"id": "bad-second", "source": [sources[0], b64(b"junk"), sources[2]], "edited": edited[3],
         "instruction": "item 3"}]}
    answer = httpx.post(echo_server.url + "/v1/rewards", json=body)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [(r["id"], r["status"], r["sources"]) for r in results] == [
        ("three", "ok", 3), ("one", "ok", 1), ("listed-one", "ok", 1), ("bad-second", "error", 3)]
    for k in range(3):
        assert results[k]["reward"] == pytest.approx(expected_echo(k, item_image(k))["reward"])
    assert results[3]["error"]["stage"] == "input" and results[3]["error"]["message"].startswith("source 2:")
    item = body["items"][0]
    for bad in ([], [sources[0]] * 9, [1, 2], {"a": sources[0]}):
        refused = httpx.post(echo_server.url + "/v1/rewards", json={"items": [{**item, "source": bad}]})
        assert refused.status_code == 422, bad
    eight = httpx.post(echo_server.url + "/v1/rewards", json={"items": [{**item, "source": [sources[0]] * 8}]})
    assert eight.status_code == 200 and eight.json()["results"][0]["sources"] == 8


def test_sources_reach_the_judge_in_order_decoded_once_and_counted_in_pixels(monkeypatch):
    """In process: each item's sources go to the model in their order, then the
    edited image, under the multi-image prompt; a source shared by items (at
    any place in their lists) is decoded once and its pixels counted once."""
    import asyncio

    import spatialreward.serve.serving as serving
    from spatialreward.config import load_config
    from spatialreward.images import load_image
    from spatialreward.judge import Judge
    from spatialreward.prompts import render_sc
    from spatialreward.serve.protocol import RewardRequest
    from spatialreward.testing.scripted import ScriptedBackend, image_digest

    from PIL import Image

    a, b = Image.new("RGB", (20, 10), (200, 0, 0)), Image.new("RGB", (30, 10), (0, 0, 200))
    edited = [item_image(k) for k in range(3)]  # 16 x 16 each
    text = {"a": b64(png_bytes(a)), "b": b64(png_bytes(b))}
    request = RewardRequest.model_validate({"items": [
        {"id": "ab", "source": [text["a"], text["b"]], "edited": b64(png_bytes(edited[0])), "instruction": "item 0"},
        {"id": "ba", "source": [text["b"], text["a"]], "edited": b64(png_bytes(edited[1])), "instruction": "item 1"},
        {"id": "a", "source": text["a"], "edited": b64(png_bytes(edited[2])), "instruction": "item 2"}]})
    decoded_texts = []
    real = serving.decode_image
    monkeypatch.setattr(serving, "decode_image",
                        lambda data, *a, **k: decoded_texts.append(data) or real(data, *a, **k))
    backend = ScriptedBackend({"echo": True})
    service = serving.RewardService(Judge(backend, load_config(None, {"batch_size": 8})))
    decoded = service.decode(request)
    assert len(decoded_texts) == 5  # a, b and three edited images: each once
    ab, ba, single = (s.source for s in decoded.samples)
    assert ab[0] is ba[1] is single and ab[1] is ba[0]  # one bytes object per distinct source
    assert decoded.pixels == 200 + 300 + 3 * 256 and decoded.sources == [2, 2, 1]

    async def go():
        try:
            return await service.score(request)
        finally:
            await service.aclose()

    results = asyncio.run(go())
    assert [(r["id"], r["status"], r["sources"]) for r in results] == [("ab", "ok", 2), ("ba", "ok", 2), ("a", "ok", 1)]
    assert service.admitted_pixels == 0 and service.pending == 0
    sc = {r.prompt.rsplit("Editing instruction: ", 1)[-1].strip(): r
          for c in backend.calls for r in c["requests"] if r.kind == "sc"}
    digest = lambda image: image_digest(load_image(image))  # noqa: E731
    assert [image_digest(i) for i in sc["item 0"].images] == [digest(a), digest(b), digest(edited[0])]
    assert [image_digest(i) for i in sc["item 1"].images] == [digest(b), digest(a), digest(edited[1])]
    assert [image_digest(i) for i in sc["item 2"].images] == [digest(a), digest(edited[2])]
    assert sc["item 0"].prompt == render_sc("item 0", "eval", 2) and sc["item 2"].prompt == render_sc("item 2")


def test_pickle_is_refused(echo_server):
    import pickle

    answer = httpx.post(echo_server.url + "/", content=pickle.dumps({"output_image": []}),
                        headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 415 and "pickle" in answer.json()["detail"]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """Tight limits, a slow model (0.4 s per generate call), a token."""
    tmp = tmp_path_factory.mktemp("small")
    (tmp / "token").write_text("s3cret-token\n")
    server = start(tmp, {"echo": True, "delay_s": 0.4}, "--max-body-mb", "1", "--max-items", "4", "--max-queue", "4",
                   "--token-file", str(tmp / "token"), "--batch-size", "8")
    yield server
    server.stop()


AUTH = {"Authorization": "Bearer s3cret-token"}


def test_401_without_the_token(small_server):
    body = {"items": [{"source": b64(png_bytes(item_image(1))), "edited": b64(png_bytes(item_image(2))),
                       "instruction": "item 2"}]}
    assert httpx.post(small_server.url + "/v1/rewards", json=body).status_code == 401
    wrong = httpx.post(small_server.url + "/v1/rewards", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(small_server.url + "/metrics").status_code == 401
    assert httpx.get(small_server.url + "/health").status_code == 200  # liveness stays open
    assert httpx.post(small_server.url + "/v1/rewards", json=body, headers=AUTH).status_code == 200
    with RewardClient(small_server.url, token="s3cret-token") as client:
        assert client.score([(item_image(1), item_image(2), "item 2")])[0].ok


def test_413_body_and_items(small_server):
    big = b64(b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024))
    body = {"items": [{"source": big, "edited": big, "instruction": "item 1"}]}
    answer = httpx.post(small_server.url + "/v1/rewards", json=body, headers=AUTH)
    assert answer.status_code == 413 and "--max-body-mb" in answer.json()["detail"]
    item = {"source": b64(png_bytes(item_image(1))), "edited": b64(png_bytes(item_image(2))), "instruction": "item"}
    answer = httpx.post(small_server.url + "/v1/rewards", json={"items": [item] * 5}, headers=AUTH)
    assert answer.status_code == 413 and "--max-items 4" in answer.json()["detail"]


def test_503_when_the_queue_is_full(small_server):
    items = [(item_image(9), item_image(k), f"item {k}") for k in range(4)]
    with RewardClient(small_server.url, token="s3cret-token", max_retries=1) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.score, items)  # fills the queue (4 items) for >= 0.4 s
        deadline = time.monotonic() + 10
        while "spatialreward_pending_items 4" not in httpx.get(small_server.url + "/metrics", headers=AUTH).text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(RewardError) as refused:
            client.score(items[:1])
        assert refused.value.status == 503
        raw = httpx.post(small_server.url + "/v1/rewards", headers=AUTH, json={"items": [
            {"source": b64(png_bytes(item_image(1))), "edited": b64(png_bytes(item_image(2))), "instruction": "x"}]})
        if raw.status_code == 503:  # still full
            assert raw.headers["retry-after"].isdigit()
        assert [r.ok for r in first.result()] == [True] * 4
    # with retries, the client waits out the 503 and gets its answer
    with RewardClient(small_server.url, token="s3cret-token", max_retries=5, backoff_s=0.1) as client, \
            ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(client.score, items) for _ in range(2)]
        assert all(r.ok for run in runs for r in run.result())


def test_a_client_that_gives_up_does_not_leak_queue_places(small_server):
    with RewardClient(small_server.url, token="s3cret-token", timeout=0.2, max_retries=1) as client:
        with pytest.raises(RewardError, match="failed after 1 tries"):
            client.score([(item_image(9), item_image(k), f"item {k}") for k in range(4)])
    deadline = time.monotonic() + 10  # its items finish in the background and give their places back
    while "spatialreward_pending_items 0" not in httpx.get(small_server.url + "/metrics", headers=AUTH).text:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with RewardClient(small_server.url, token="s3cret-token", max_retries=1) as client:
        assert all(r.ok for r in client.score([(item_image(9), item_image(k), f"item {k}") for k in range(4)]))


def test_client_retries_are_bounded():
    from serve_helpers import free_port

    started = time.monotonic()
    with RewardClient(f"http://127.0.0.1:{free_port()}", max_retries=3, backoff_s=0.01) as client:
        with pytest.raises(RewardError, match="after 3 tries"):
            client.score([(item_image(1), item_image(2), "item 2")])
    assert time.monotonic() - started < 5


def test_without_the_serve_extra_one_line_and_exit_3(monkeypatch):
    import sys

    from click.testing import CliRunner

    from spatialreward.commands import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    result = CliRunner().invoke(main, ["serve", "--backend", "scripted", "--model", "x.json"])
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        'Error: spatialreward serve needs FastAPI and uvicorn (uvicorn is missing): pip install "spatialreward[serve]"']


def test_non_loopback_host_needs_a_token(tmp_path):
    result = run_cli("serve", "--host", "0.0.0.0", "--backend", "scripted", "--model", "x.json",
                     env={"SPATIALREWARD_SERVE_TOKEN": ""})
    assert result.returncode == 2 and "--token-file" in result.stderr and "--insecure" in result.stderr


# -- engine failure, shutdown -------------------------------------------------------------

def test_engine_failure_fails_items_and_ready_says_why(tmp_path):
    server = start(tmp_path, {"answers": {"sc": "!raise engine unreachable", "pq": "!raise engine unreachable"}})
    try:
        with RewardClient(server.url) as client:
            results = client.score([(item_image(1), item_image(k), f"item {k}") for k in range(4)])
        assert all(r.error["stage"] == "model" and r.reward is None for r in results)
        assert "engine unreachable" in results[0].error["message"]
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and "engine unreachable" in ready.json()["reason"]
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_in_flight_and_exits_0(tmp_path):
    server = start(tmp_path, {"echo": True, "delay_s": 0.5}, "--batch-size", "1")
    items = [(item_image(2), item_image(k), f"item {k}") for k in range(3)]  # 6 calls of 0.5 s
    with RewardClient(server.url, max_retries=1) as client, ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.score, items)
        deadline = time.monotonic() + 10
        while "spatialreward_pending_items 3" not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)  # with ~3 s of model work still to do
        results = running.result(timeout=30)
    assert [r.reward for r in results] == [pytest.approx(expected_echo(k, item_image(k))["reward"]) for k in range(3)]
    assert server.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)


# -- ordering under load ---------------------------------------------------------------------

def test_ordering_under_load_many_clients_thousands_of_items(echo_server):
    """16 client threads, 2400 items: every result lands on its own item, none lost,
    every failure explicit (every 37th item has a broken edited image)."""
    clients, per_request, requests_per_client = 16, 15, 10
    total = clients * per_request * requests_per_client
    images = {k: png_bytes(item_image(k)) for k in range(total)}
    expected = {k: expected_echo(k, item_image(k)) for k in range(total)}
    source = png_bytes(item_image(99999))
    wrong, missing, unexplained = [], [], []

    def one_client(c: int) -> int:
        seen = 0
        with RewardClient(echo_server.url, max_retries=3, backoff_s=0.05) as client:
            for r in range(requests_per_client):
                ks = [(c * requests_per_client + r) * per_request + i for i in range(per_request)]
                items = [{"id": f"k{k}", "source": source,
                          "edited": b"broken" if k % 37 == 0 else images[k], "instruction": f"item {k}"} for k in ks]
                results = client.score(items)
                if len(results) != len(ks):
                    missing.append((c, r))
                for k, result in zip(ks, results):
                    seen += 1
                    if result.id != f"k{k}":
                        wrong.append((k, result.id))
                    elif k % 37 == 0:
                        if result.ok or result.error["stage"] != "input":
                            unexplained.append(k)
                    elif not result.ok or result.reward != pytest.approx(expected[k]["reward"]) \
                            or result.scores["success"] != expected[k]["success"] \
                            or result.scores["naturalness"] != expected[k]["naturalness"]:
                        wrong.append((k, result.record))
        return seen

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seen = sum(pool.map(one_client, range(clients)))
    elapsed = time.perf_counter() - started
    assert seen == total and not missing
    assert not wrong, wrong[:3]
    assert not unexplained
    assert elapsed < 120
    metrics = httpx.get(echo_server.url + "/metrics").text
    assert 'spatialreward_item_errors_total{stage="input"}' in metrics


# -- the tiny transformers model -------------------------------------------------------------

@pytest.mark.slow  # the tiny model behind a real server (-m "not slow" leaves it out)
def test_tiny_model_server(tiny_model, photos, tmp_path):
    server = start(tmp_path, None, *FAST, model_args=["--backend", "transformers", "--model", str(tiny_model)])
    try:
        with RewardClient(server.url) as client:
            [result] = client.score([(photos["coffee"], photos["coffee_red_square"], "Add a red square")],
                                    want=("raw",))
        info = client_info = httpx.get(server.url + "/v1/info").json()
        assert info["model"] == str(tiny_model)
        assert result.record["judge_hash"] == client_info["judge_hash"]
        assert result.ok or result.error["stage"] in ("parse", "model")
        if result.ok:
            assert 0 <= result.reward <= 1 and result.score in (0.0, 1.0)
        else:
            assert result.reward is None and result.score is None
    finally:
        assert server.stop() == 0
