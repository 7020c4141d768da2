"""The reward server on one event loop: retries judged once (idempotency keys),
disconnects cancel work, /health stays fast while a large body is decoded,
requests served fairly, admission by pixels before any decoding. Against real
`spatialreward serve` processes (the scripted echo backend, slowed down), plus
in-process checks of the service's parts."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_helpers import expected_echo, item_image, png_bytes, start

from spatialreward.client import RewardClient, RewardError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {k: str(v) for k, v in labels.items()}:
                return sample.value
    return 0.0


def judged(server) -> float:
    return metric(server, "spatialreward_items_total", status="ok") + metric(
        server, "spatialreward_items_total", status="error")


def wait_for(predicate, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def idle(server) -> None:
    wait_for(lambda: metric(server, "spatialreward_pending_items") == 0, 20, "no pending items")


def items_body(ks, source=None) -> dict:
    source = b64(png_bytes(source if source is not None else item_image(99)))
    return {"items": [{"source": source, "edited": b64(png_bytes(item_image(k))), "instruction": f"item {k}"}
                      for k in ks]}


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """0.3 s per generate() call, up to 8 model requests per call (4 edits)."""
    server = start(tmp_path_factory.mktemp("slow"), {"echo": True, "delay_s": 0.3, "record": False},
                   "--batch-size", "8")
    yield server
    assert server.stop() == 0


# -- idempotency: a read timeout and its retry judge the item once --------------------------------

def test_a_read_timeout_and_its_retries_judge_the_item_once(slow_server):
    idle(slow_server)
    before, replays, cancelled = (judged(slow_server), metric(slow_server, "spatialreward_idempotent_replays_total"),
                                  metric(slow_server, "spatialreward_cancelled_items_total"))
    # Every try times out long before the 0.3 s model call ends; the retries carry the same key.
    with RewardClient(slow_server.url, timeout=0.1, max_retries=30, backoff_s=0.02) as client:
        [result] = client.score([(item_image(5), item_image(6), "item 6")])
    assert result.ok and result.reward == pytest.approx(expected_echo(6, item_image(6))["reward"])
    idle(slow_server)
    assert judged(slow_server) - before == 1  # one item sent, one judged (without keys: one per try)
    assert metric(slow_server, "spatialreward_idempotent_replays_total") - replays >= 1
    assert metric(slow_server, "spatialreward_cancelled_items_total") == cancelled  # kept for the retry


def test_a_key_with_another_body_is_422(slow_server):
    headers = {"Idempotency-Key": "key-reused-with-another-body"}
    first = httpx.post(slow_server.url + "/v1/rewards", json=items_body([1]), headers=headers, timeout=30)
    assert first.status_code == 200
    again = httpx.post(slow_server.url + "/v1/rewards", json=items_body([1]), headers=headers, timeout=30)
    assert again.status_code == 200 and again.json() == first.json()  # answered from the cache
    other = httpx.post(slow_server.url + "/v1/rewards", json=items_body([2]), headers=headers, timeout=30)
    assert other.status_code == 422 and "different body" in other.json()["detail"]


# -- a client that goes away cancels its work -------------------------------------------------------

def test_a_client_that_disconnects_cancels_its_items(slow_server):
    idle(slow_server)
    before, cancelled = judged(slow_server), metric(slow_server, "spatialreward_cancelled_items_total")
    ks = range(300, 332)  # 64 model requests: 8 calls of 0.3 s
    with pytest.raises(httpx.ReadTimeout):  # no key, no retry: the client gives up and closes the connection
        httpx.post(slow_server.url + "/v1/rewards", json=items_body(ks), timeout=0.5)
    idle(slow_server)
    gone = metric(slow_server, "spatialreward_cancelled_items_total") - cancelled
    done = judged(slow_server) - before
    assert gone > 0 and done + gone == len(ks) and done < len(ks)
    time.sleep(0.7)  # nothing of it is judged afterwards
    assert judged(slow_server) - before == done
    assert metric(slow_server, "spatialreward_requests_total", route="/v1/rewards", code=499) >= 1


# -- the event loop stays free: /health while a large body is decoded ------------------------------------

def noisy_png(side: int = 600) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_health_stays_fast_while_a_50mb_request_is_decoded(slow_server):
    idle(slow_server)
    png = noisy_png()  # ~1.1 MB of noise: base64 1.4 MB
    count = 50_000_000 // (2 * len(b64(png))) + 1
    bodies = []
    for variant in range(2):
        # distinct edited files (bytes after IEND are ignored by decoders): each is decoded
        items = [{"source": b64(png + bytes([variant])), "edited": b64(png + bytes([variant]) * (k + 2)),
                  "instruction": f"item {k}"} for k in range(count)]
        bodies.append(json.dumps({"items": items}).encode())
    assert all(len(body) > 50_000_000 for body in bodies)

    def post(body: bytes) -> tuple[int, dict]:
        # http.client sends with sendall (httpx's sync write copies what is left of the body after each
        # send(), holding this process's GIL for seconds: it would stall the health checks here, not there)
        connection = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=120)
        try:
            connection.request("POST", "/v1/rewards", body=body, headers={"content-type": "application/json"})
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    def trial() -> float:
        """/health's p99 over 50 checks while the two large requests are received, parsed and decoded."""
        latencies = []
        with httpx.Client(base_url=slow_server.url, timeout=10) as health, ThreadPoolExecutor(2) as pool:
            health.get("/health")  # connected
            running = [pool.submit(post, body) for body in bodies]
            while len(latencies) < 50:
                started = time.perf_counter()
                assert health.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.01)
            overlapped = not any(future.done() for future in running)
            answers = [future.result() for future in running]
        assert overlapped, "the large requests ended before the 50 health checks"
        assert [status for status, _ in answers] == [200, 200]
        assert all(r["status"] == "ok" for _, answer in answers for r in answer["results"])
        return float(np.percentile(latencies, 99))

    # Other processes on a shared machine can only add delay: a second trial when the first misses.
    p99s = [trial()]
    if p99s[0] >= 0.05:
        idle(slow_server)
        p99s.append(trial())
    assert min(p99s) < 0.05, f"/health p99 {[round(p * 1000) for p in p99s]} ms while decoding"


# -- fairness: a small request is not queued behind large ones ------------------------------------------

def test_a_one_item_request_is_not_queued_behind_two_large_ones(slow_server):
    idle(slow_server)

    def one() -> float:
        started = time.perf_counter()
        with RewardClient(slow_server.url, max_retries=1) as client:
            [result] = client.score([(item_image(1), item_image(7), "item 7")])
        assert result.ok
        return time.perf_counter() - started

    alone = min(one() for _ in range(2))
    # Two requests of 256 items: 1024 model requests, 128 calls of 0.3 s (38 s) if they ran to the end;
    # once the small request is answered, their clients hang up and the server cancels the rest.
    bodies = [json.dumps(items_body(range(1000 * b, 1000 * b + 256), source=item_image(b))).encode() for b in (1, 2)]
    connections = [http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=60) for _ in bodies]

    def big(connection, body) -> None:
        connection.request("POST", "/v1/rewards", body=body, headers={"content-type": "application/json"})
        with pytest.raises(OSError):  # hung up below
            connection.getresponse()

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(big, connection, body) for connection, body in zip(connections, bodies)]
        wait_for(lambda: metric(slow_server, "spatialreward_pending_items") == 512, 10, "the large requests admitted")
        loaded = one()
        for connection in connections:
            connection.sock.shutdown(socket.SHUT_RDWR)
        for future in running:
            future.result()
    idle(slow_server)
    print(f"1 item: {alone:.2f} s alone, {loaded:.2f} s behind two 256-item requests")
    assert loaded < 3 * alone, f"1 item: {alone:.2f} s alone, {loaded:.2f} s behind two 256-item requests"


# -- admission by pixels ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pixel_server(tmp_path_factory):
    """A pixel budget of 2 megapixels, 1 s per model call."""
    server = start(tmp_path_factory.mktemp("pixels"), {"echo": True, "delay_s": 1.0, "record": False},
                   "--batch-size", "8", "--max-pixels-in-flight-mp", "2")
    yield server
    assert server.stop() == 0


def solid(width: int, height: int, shade: int = 0):
    from PIL import Image

    return Image.new("RGB", (width, height), (shade, 100, 200))


def test_admission_by_pixels(pixel_server):
    server = pixel_server
    assert httpx.get(server.url + "/v1/info").json()["limits"]["max_pixels_in_flight"] == 2_000_000
    with RewardClient(server.url, max_retries=1) as client, ThreadPoolExecutor(1) as pool:
        # 1.8 MP in flight for ~1 s
        first = pool.submit(client.score, [(solid(1000, 1000), solid(1000, 800), "item 1")])
        wait_for(lambda: metric(server, "spatialreward_admitted_pixels") == 1_800_000, 10, "1.8 MP admitted")
        rejected = metric(server, "spatialreward_rejected_items_total")
        with pytest.raises(RewardError) as refused:  # 0.5 MP more does not fit: refused whole
            client.score([(solid(500, 500), solid(500, 500, 1), "item 2")])
        assert refused.value.status == 503 and "--max-pixels-in-flight-mp" in str(refused.value)
        assert metric(server, "spatialreward_rejected_items_total") - rejected == 1
        assert metric(server, "spatialreward_admitted_pixels") == 1_800_000
        raw = httpx.post(server.url + "/v1/rewards", json={"items": [
            {"source": b64(png_bytes(solid(500, 500))), "edited": b64(png_bytes(solid(500, 500, 2))),
             "instruction": "x"}]})
        if raw.status_code == 503:  # still in flight
            assert raw.headers["retry-after"].isdigit()
        with pytest.raises(RewardError) as too_large:  # larger than the whole budget: never admitted
            client.score([(solid(1500, 1500), solid(10, 10), "item 3")])
        assert too_large.value.status == 413 and "--max-pixels-in-flight-mp 2" in str(too_large.value)
        assert first.result()[0].ok
    idle(server)
    assert metric(server, "spatialreward_admitted_pixels") == 0
    # a source shared by a request's items counts once: 1 MP + 3 x 0.01 MP
    with RewardClient(server.url, max_retries=1) as client, ThreadPoolExecutor(1) as pool:
        shared = png_bytes(solid(1000, 1000))
        group = pool.submit(client.score, [(shared, solid(100, 100, k), f"item {k}") for k in range(3)])
        wait_for(lambda: metric(server, "spatialreward_admitted_pixels") > 0, 10, "the group admitted")
        assert metric(server, "spatialreward_admitted_pixels") == 1_030_000
        assert all(r.ok for r in group.result())
    idle(server)
    assert metric(server, "spatialreward_admitted_pixels") == 0


# -- in process: the service's parts -------------------------------------------------------------------------

def make_service(script=None, **kwargs):
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.serve.serving import RewardService
    from spatialreward.testing.scripted import ScriptedBackend

    backend = ScriptedBackend(script or {"echo": True})
    judge = Judge(backend, load_config(None, {"batch_size": 8}))
    return backend, RewardService(judge, **kwargs)


def test_a_refused_request_decodes_nothing(monkeypatch):
    import spatialreward.prepare as prepare
    from spatialreward.serve.protocol import RewardRequest
    from spatialreward.serve.serving import Limits, Overloaded, TooLarge

    decoded = []
    real = prepare.load_image
    monkeypatch.setattr(prepare, "load_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    backend, service = make_service(limits=Limits(max_pixels_in_flight=1000))
    request = RewardRequest.model_validate(items_body([1, 2]))  # 16x16 images: 3 x 256 pixels

    async def go():
        try:
            service.admitted_pixels = 900  # as if other requests held the budget
            with pytest.raises(Overloaded, match="pixel budget full"):
                await service.score(request)
            assert decoded == [] and not backend.calls and service.pending == 0
            service.admitted_pixels = 0
            results = await service.score(request)
            assert [r["status"] for r in results] == ["ok", "ok"] and decoded
            assert service.admitted_pixels == 0 and service.pending == 0
            with pytest.raises(TooLarge, match="--max-pixels-in-flight-mp"):
                await service.score(RewardRequest.model_validate(items_body(range(5))))
        finally:
            await service.aclose()

    asyncio.run(go())


def test_a_refused_request_lets_go_of_its_images_at_once():
    """A request refused for the pixel budget (after its images were base64-decoded
    to count their pixels) holds nothing once answered, without a garbage
    collection: an asyncio task keeps its exception's traceback, whose frames
    held the decoded images in a cycle (measured: 48 refused requests' images,
    80 MiB, still held after a load test). Through every door: /v1/rewards with
    and without an Idempotency-Key (the client's retries), /compute, score()."""
    import gc

    from spatialreward.sample import Sample
    from spatialreward.serve.compute import compute
    from spatialreward.serve.serving import Limits, Overloaded

    backend, service = make_service(limits=Limits(max_pixels_in_flight=1000))
    body = json.dumps(items_body([1, 2])).encode()  # 16x16 images: 3 x 256 pixels
    compute_body = json.dumps({"prompt": ["item 1"], "image": [b64(png_bytes(item_image(1)))],
                               "condition_images": [[b64(png_bytes(item_image(99)))]]}).encode()

    async def samples_alive() -> int:
        """Samples still referenced, once the task's done callbacks have run and the
        request workers have let go: a worker thread holds the result it returned
        (the decoded samples) in its frame until it gets the GIL again, which on a
        loaded machine can come after the loop has answered (the project CI's
        failure: 2 left). The collector stays off, so a cycle that holds them would
        still be counted however long this waits."""
        for _ in range(200):
            alive = sum(type(o) is Sample for o in gc.get_objects())  # type(): no attribute lookups on lazy modules
            if not alive:
                break
            await asyncio.sleep(0.01)
        return alive

    async def refused(call) -> str:
        try:
            await call()
        except Overloaded as exc:
            return str(exc)
        return "answered"

    async def go():
        from spatialreward.serve.protocol import RewardRequest

        service.admitted_pixels = 900  # as if other requests held the budget
        doors = {
            "rewards": lambda: service.rewards([body]),
            "rewards with a key": lambda: service.rewards([body], key="retried-1"),
            "compute": lambda: compute(service, [compute_body]),
            "score": lambda: service.score(RewardRequest.model_validate(json.loads(body))),
        }
        left = {}
        try:
            for door, call in doors.items():
                assert "pixel budget full" in await refused(call), door
                left[door] = await samples_alive()
        finally:
            await service.aclose()
        return left

    gc.collect()
    gc.disable()
    try:
        left = asyncio.run(go())
    finally:
        gc.enable()
    assert left == {door: 0 for door in left}, left


def test_idempotent_attempts_share_one_judgment_and_abandoned_work_is_cancelled():
    from spatialreward.serve.serving import ClientGone, InvalidRequest

    backend, service = make_service({"echo": True, "delay_s": 0.3}, idempotency_grace_s=0.5)
    body = json.dumps(items_body([1, 2, 3])).encode()

    def gone_after(seconds: float):
        started = time.monotonic()

        async def check() -> bool:
            return time.monotonic() - started > seconds

        return check

    async def go():
        try:
            # a first attempt leaves; a retry with the key picks its work up: judged once
            with pytest.raises(ClientGone):
                await service.rewards(body, key="k1", disconnected=gone_after(0.05))
            answer = await service.rewards(body, key="k1", disconnected=gone_after(60))
            results = answer["results"]
            assert [r["index"] for r in results] == [0, 1, 2] and all(r["status"] == "ok" for r in results)
            assert await service.rewards(body, key="k1") == answer  # finished: from the cache
            assert service.metrics.replays.get() == 2
            judged_sc = sum(r.kind == "sc" for call in backend.calls for r in call["requests"])
            assert judged_sc == 3
            with pytest.raises(InvalidRequest):
                await service.rewards(json.dumps(items_body([4])).encode(), key="k1")
            # abandoned with a key and never retried: cancelled after the grace period
            calls = len(backend.calls)
            with pytest.raises(ClientGone):
                await service.rewards(json.dumps(items_body(range(10, 30))).encode(), key="k2",
                                      disconnected=gone_after(0.05))
            assert service.pending == 20
            deadline = time.monotonic() + 5
            while service.pending:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert service.metrics.cancelled.get() > 0 and len(backend.calls) - calls < 5
            # without a key: cancelled at once
            with pytest.raises(ClientGone):
                await service.rewards(json.dumps(items_body(range(40, 60))).encode(),
                                      disconnected=gone_after(0.05))
            assert service.pending == 0 and service.admitted_pixels == 0
        finally:
            await service.aclose()

    asyncio.run(go())


def test_parse_request_answers_as_fastapi_does():
    """The body parser (long strings cut out before the JSON parse) gives FastAPI's 422s."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from spatialreward.serve.protocol import RewardRequest
    from spatialreward.serve.serving import InvalidRequest, parse_request

    async def x(body):
        return body.model_dump(by_alias=True)

    x.__annotations__["body"] = RewardRequest  # a class, not this module's postponed annotation text
    app = FastAPI()
    app.post("/x")(x)

    long = b64(png_bytes(item_image(1)) * 200)
    good = {"source": long, "edited": long[:-8] + "AAAAAAAA", "instruction": "x", "meta": {"k": long, "n": [1, "a"]}}
    bodies = [
        json.dumps({"items": [good], "return": ["raw"]}),
        json.dumps({"items": [{**good, "extra": long}]}),
        json.dumps({"items": [{**good, long: 1}]}),  # a long key
        json.dumps({"items": [{**good, "instruction": "x" * 5000}]}),
        json.dumps({"items": [{**good, "id": 5}]}),
        json.dumps({"items": [{**good, "source": long + '"quoted\\" \\\\'}]}),  # escapes stay in the JSON parse
        json.dumps({"items": [good]})[:-3],  # cut short
        '{"items": [{"source": "' + long + '", ]}',
        '{"items": [{"source": "' + long,  # unterminated
        "[1, 2]",
        "",
        "{not json",
    ]
    with TestClient(app) as client:
        for body in bodies:
            answer = client.post("/x", content=body.encode(), headers={"content-type": "application/json"})
            try:
                parsed = parse_request(body.encode())
            except InvalidRequest as exc:
                assert answer.status_code == 422 and exc.detail == answer.json()["detail"], body[:80]
            else:
                assert answer.status_code == 200 and parsed.model_dump(by_alias=True) == answer.json(), (body[:80], answer.text[:300])
