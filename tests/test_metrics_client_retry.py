"""The server's metrics (prometheus_client, one registry per service) and the
client's retries (tenacity, one Idempotency-Key per request), without a server."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spatialreward.client import AsyncRewardClient, RewardClient, RewardError
from spatialreward.serve.metrics import Metrics


class FakeService:
    queue_depth = 2
    in_flight = 1
    pending = 3

    def ready(self):
        return True, None


def families(metrics: Metrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.render())}


def value(metrics: Metrics, sample_name: str, **labels) -> float:
    for family in text_string_to_metric_families(metrics.render()):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == {k: str(v) for k, v in labels.items()}:
                return sample.value
    raise KeyError(sample_name, labels)


def test_metrics_render_parses_with_the_names():
    service = FakeService()
    metrics = Metrics(service)
    metrics.requests.inc(route="/v1/rewards", code=200)
    metrics.requests.inc(route="/v1/rewards", code=200)
    metrics.items.inc(status="ok")
    metrics.errors.inc(stage="input")
    metrics.tokens.inc(17)
    metrics.rejected.inc(4)
    metrics.cancelled.inc()
    metrics.replays.inc()
    metrics.item_latency.observe(0.3)
    metrics.request_latency.observe(0.02)

    names = set(families(metrics))
    assert {"spatialreward_requests", "spatialreward_items", "spatialreward_item_errors", "spatialreward_rejected_items",
            "spatialreward_generated_tokens", "spatialreward_cancelled_items", "spatialreward_idempotent_replays",
            "spatialreward_request_seconds", "spatialreward_item_seconds", "spatialreward_queue_depth",
            "spatialreward_in_flight_requests", "spatialreward_pending_items", "spatialreward_ready",
            "spatialreward_admitted_pixels", "spatialreward_prepare_queue_depth"} <= names
    assert value(metrics, "spatialreward_requests_total", code=200, route="/v1/rewards") == 2
    assert value(metrics, "spatialreward_item_errors_total", stage="input") == 1
    assert value(metrics, "spatialreward_generated_tokens_total") == 17
    assert value(metrics, "spatialreward_rejected_items_total") == 4
    assert value(metrics, "spatialreward_cancelled_items_total") == 1
    assert value(metrics, "spatialreward_idempotent_replays_total") == 1
    assert value(metrics, "spatialreward_item_seconds_count") == 1
    assert value(metrics, "spatialreward_item_seconds_bucket", le="0.5") == 1
    assert value(metrics, "spatialreward_item_seconds_bucket", le="0.25") == 0
    assert metrics.requests.get(route="/v1/rewards", code=200) == 2
    assert metrics.items.get(status="error") == 0
    assert metrics.tokens.get() == 17

    # gauges are read from the service at scrape time; the missing attributes read 0
    assert value(metrics, "spatialreward_pending_items") == 3
    assert value(metrics, "spatialreward_admitted_pixels") == 0
    assert value(metrics, "spatialreward_prepare_queue_depth") == 0
    service.pending, service.admitted_pixels, service.prepare_queue = 0, 1_000_000, 5
    assert value(metrics, "spatialreward_pending_items") == 0
    assert value(metrics, "spatialreward_admitted_pixels") == 1_000_000
    assert value(metrics, "spatialreward_prepare_queue_depth") == 5
    assert "spatialreward_pending_items 0" in metrics.render()  # what the serve tests poll for
    assert metrics.content_type.startswith("text/plain")


def test_each_metrics_has_its_own_registry():
    first, second = Metrics(FakeService()), Metrics(FakeService())
    first.items.inc(status="ok")
    assert first.items.get(status="ok") == 1 and second.items.get(status="ok") == 0


# -- the client's retries -------------------------------------------------------------------

def ok_answer(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    return httpx.Response(200, json={"results": [
        {"index": i, "id": None, "status": "ok", "reward": 0.5, "score": 2.5} for i in range(len(items))]})


def scripted(statuses: list, seen: list, retry_after: str | None = None):
    """A handler answering ``statuses`` in turn (an int, or "drop" for a transport error), then 200s."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = statuses[len(seen) - 1] if len(seen) <= len(statuses) else 200
        if step == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        if step == 200:
            return ok_answer(request)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return httpx.Response(step, json={"detail": f"status {step}"}, headers=headers)

    return handler


def sync_client(handler, **kwargs) -> RewardClient:
    client = RewardClient("http://reward.test", token="secret", **kwargs)
    client._http.close()
    client._http = httpx.Client(base_url=client.base_url, headers=client.headers,
                                transport=httpx.MockTransport(handler))
    return client


ITEM = (b"source", b"edited", "make it blue")


def test_retries_keep_one_idempotency_key_and_honour_retry_after(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    seen: list[httpx.Request] = []
    client = sync_client(scripted([503, "drop", 502], seen, retry_after="7"), max_retries=4, backoff_s=100.0)
    results = client.score([ITEM])
    assert [r.reward for r in results] == [0.5]
    assert len(seen) == 4
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(keys) == 1 and len(keys.pop()) == 32
    assert all(request.headers["Authorization"] == "Bearer secret" for request in seen)
    assert json.loads(seen[0].content)["items"][0]["source"] == base64.b64encode(b"source").decode()
    # the 503 and 502 waits are Retry-After; the transport error's is the backoff, 100 s * 2**1 * [0.5, 1]
    assert sleeps[0] == 7 and sleeps[2] == 7
    assert 100 <= sleeps[1] <= 200

    # the next request (and each chunk) gets a new key
    seen.clear()
    client.chunk_size = 1
    client.score([ITEM, ITEM])
    assert len({request.headers["Idempotency-Key"] for request in seen}) == 2


def test_retry_after_is_capped_and_backoff_grows(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    client = sync_client(scripted([503], [], retry_after="3600"), max_retries=2)
    client.score([ITEM])
    assert sleeps == [30.0]
    sleeps.clear()
    client = sync_client(scripted([504, 504, 504], []), max_retries=4, backoff_s=1.0)
    client.score([ITEM])
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1 and 1 <= sleeps[1] <= 2 and 2 <= sleeps[2] <= 4


def test_stops_after_max_retries(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    seen: list[httpx.Request] = []
    client = sync_client(scripted([503] * 10, seen), max_retries=3)  # tries in all, as the released client
    with pytest.raises(RewardError, match="failed after 3 tries: HTTP 503") as caught:
        client.score([ITEM])
    assert caught.value.status == 503 and len(seen) == 3

    seen.clear()
    client = sync_client(scripted(["drop"] * 10, seen), max_retries=1)
    with pytest.raises(RewardError, match="failed after 1 tries") as caught:
        client.score([ITEM])
    assert caught.value.status is None and isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(seen) == 1


def test_other_statuses_are_not_retried(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("slept"))
    seen: list[httpx.Request] = []
    client = sync_client(scripted([413], seen), max_retries=3)
    with pytest.raises(RewardError, match="HTTP 413: status 413") as caught:
        client.score([ITEM])
    assert caught.value.status == 413 and len(seen) == 1


def test_async_client_retries_with_one_key_per_chunk():
    seen: list[httpx.Request] = []
    answers: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        key = request.headers["Idempotency-Key"]
        answers[key] = answers.get(key, 0) + 1
        if answers[key] == 1:  # every chunk's first try is refused
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "0"})
        return ok_answer(request)

    async def go():
        client = AsyncRewardClient("http://reward.test", chunk_size=2, max_retries=2, backoff_s=0)
        await client._http.aclose()
        client._http = httpx.AsyncClient(base_url=client.base_url, transport=httpx.MockTransport(handler))
        async with client:
            results = await client.score([ITEM] * 5)
            assert [r.index for r in results] == list(range(5))
            failing = AsyncRewardClient("http://reward.test", max_retries=3, backoff_s=0)
            await failing._http.aclose()
            failing._http = httpx.AsyncClient(base_url=failing.base_url, transport=httpx.MockTransport(
                lambda request: httpx.Response(502, json={"detail": "down"})))
            async with failing:
                with pytest.raises(RewardError, match="failed after 3 tries: HTTP 502: down"):
                    await failing.score([ITEM])

    asyncio.run(go())
    assert len(seen) == 6 and sorted(answers.values()) == [2, 2, 2]
