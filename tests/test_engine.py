"""The async engine: the batching shim batches what is queued, keeps calls in
flight, retries a failed batch one by one, serves flows round-robin, drops a
cancelled request before it reaches the model, never leaves a request
unresolved; the fair limiter lets waiters in round-robin by flow."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from spatialreward.backends.base import Answer
from spatialreward.config import Generation
from spatialreward.engine import BatchingEngine, DirectEngine, FairLimiter, make_engine
from spatialreward.errors import ModelError
from spatialreward.loop import LoopThread
from spatialreward.requests import Request

IMAGE = Image.new("RGB", (32, 32))


def req(i: int, kind: str = "pq") -> Request:
    return Request(kind, (IMAGE,), f"prompt {i}", seed=i)


class Gate:
    """A backend whose first generate() waits until released, so the test can
    queue requests behind it; it records every call."""

    def __init__(self, *, fail_when=None, answers_for=None):
        self.calls: list[tuple[list[str], bool]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_when = fail_when or (lambda prompts: False)
        self.answers_for = answers_for or (lambda n: n)
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def generate(self, requests, generation, *, constrained):
        prompts = [r.prompt for r in requests]
        with self.lock:
            self.calls.append((prompts, constrained))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self.started.set()
            self.release.wait(10)
            if self.fail_when(prompts):
                raise RuntimeError("boom")
            answers = [Answer(p, 1, True) for p in prompts]
            return (answers * 2)[: self.answers_for(len(prompts))]
        finally:
            with self.lock:
                self.active -= 1


class Shim:
    """A BatchingEngine on its own loop thread, driven from the test's thread."""

    def __init__(self, backend, **kwargs):
        self.engine = BatchingEngine(backend, Generation(), **kwargs)
        self.runner = LoopThread()

    def submit(self, request, *, constrained=False, flow="default"):
        return self.runner.submit(self.engine.generate(request, constrained=constrained, flow=flow))

    def close(self):
        self.runner.run(self.engine.aclose(), timeout=10)
        self.runner.stop()


@pytest.fixture()
def shims():
    made = []
    yield made
    for shim in made:
        shim.close()


def blocked(shims, backend, **kwargs):
    """A shim whose one worker is busy with request 0 until released."""
    shim = Shim(backend, **kwargs)
    shims.append(shim)
    first = shim.submit(req(0))
    assert backend.started.wait(5)
    return shim, first


def settle():
    time.sleep(0.1)  # the submissions reach the queue (they are scheduled on the loop thread)


def test_batches_what_is_queued_oldest_first_up_to_max_batch(shims):
    backend = Gate()
    shim, first = blocked(shims, backend, max_batch=3)
    futures = [shim.submit(req(i)) for i in range(1, 8)]
    settle()
    backend.release.set()
    assert first.result(5).text == "prompt 0"
    assert [f.result(5).text for f in futures] == [f"prompt {i}" for i in range(1, 8)]
    assert [len(p) for p, _ in backend.calls] == [1, 3, 3, 1]
    assert [p for p, _ in backend.calls][1] == ["prompt 1", "prompt 2", "prompt 3"]


def test_constrained_and_free_requests_never_share_a_batch(shims):
    backend = Gate()
    shim, first = blocked(shims, backend, max_batch=8)
    futures = [shim.submit(req(i), constrained=i % 2 == 0) for i in range(1, 7)]
    settle()
    backend.release.set()
    assert all(isinstance(f.result(5), Answer) for f in futures)
    assert backend.calls[1:] == [(["prompt 1", "prompt 3", "prompt 5"], False), (["prompt 2", "prompt 4", "prompt 6"], True)]


def test_a_failed_batch_is_retried_one_by_one(shims):
    backend = Gate(fail_when=lambda prompts: "prompt 2" in prompts)
    shim, _ = blocked(shims, backend, max_batch=4)
    futures = [shim.submit(req(i, "sc")) for i in range(1, 5)]
    settle()
    backend.release.set()
    outcomes = [f.result(5) for f in futures]
    assert [o.text for o in outcomes if isinstance(o, Answer)] == ["prompt 1", "prompt 3", "prompt 4"]
    error = outcomes[1]
    assert isinstance(error, ModelError) and error.message == "SC generation failed: RuntimeError: boom"
    assert [p for p, _ in backend.calls][1:] == [
        ["prompt 1", "prompt 2", "prompt 3", "prompt 4"], ["prompt 1"], ["prompt 2"], ["prompt 3"], ["prompt 4"]]


@pytest.mark.parametrize("answers_for", [lambda n: n - 1, lambda n: n + 1 if n == 1 else n - 1])
def test_a_wrong_number_of_answers_never_shifts_answers(shims, answers_for):
    backend = Gate(answers_for=answers_for)
    backend.release.set()
    shim = Shim(backend, max_batch=4)
    shims.append(shim)
    outcomes = [f.result(5) for f in [shim.submit(req(i)) for i in range(3)]]
    assert all(isinstance(o, ModelError) and "answers for 1 requests" in o.message for o in outcomes)


def test_concurrency_keeps_calls_in_flight(shims):
    backend = Gate()
    shim = Shim(backend, max_batch=1, concurrency=4)
    shims.append(shim)
    futures = [shim.submit(req(i)) for i in range(8)]
    deadline = time.monotonic() + 5
    while backend.peak < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.peak == 4 and shim.engine.in_flight == 4
    backend.release.set()
    assert [f.result(5).text for f in futures] == [f"prompt {i}" for i in range(8)]


def test_flows_are_served_round_robin(shims):
    """A caller's one request goes out in the next batch, not behind another's 6."""
    backend = Gate()
    shim, _ = blocked(shims, backend, max_batch=2)
    big = [shim.submit(req(i), flow="big") for i in range(1, 7)]
    settle()
    small = shim.submit(req(99), flow="small")
    settle()
    backend.release.set()
    assert small.result(5).text == "prompt 99"
    assert all(f.result(5) for f in big)
    assert backend.calls[1][0] == ["prompt 1", "prompt 99"]


def test_a_cancelled_request_never_reaches_the_model(shims):
    backend = Gate()
    shim, first = blocked(shims, backend, max_batch=4)
    gone = shim.submit(req(1))
    kept = shim.submit(req(2))
    settle()
    gone.cancel()
    settle()
    backend.release.set()
    assert kept.result(5).text == "prompt 2"
    assert all("prompt 1" not in prompts for prompts, _ in backend.calls)


def test_close_fails_what_is_queued(shims):
    backend = Gate()
    shim = Shim(backend, max_batch=1)
    first = shim.submit(req(0))
    assert backend.started.wait(5)
    queued = shim.submit(req(1))
    settle()
    threading.Timer(0.2, backend.release.set).start()
    shim.runner.run(shim.engine.aclose(), timeout=10)
    assert isinstance(queued.result(5), ModelError) and "closed" in queued.result().message
    assert first.result(5).text == "prompt 0"
    late = shim.runner.run(shim.engine.generate(req(2), constrained=False), timeout=5)
    assert isinstance(late, ModelError) and "closed" in late.message
    shim.runner.stop()


def test_fair_limiter_lets_flows_in_round_robin():
    async def main():
        limiter = FairLimiter(1)
        await limiter.acquire("a")
        order = []

        async def one(flow, i):
            async with limiter.slot(flow):
                order.append(f"{flow}{i}")

        tasks = [asyncio.ensure_future(one("big", i)) for i in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(one("small", 0)))
        await asyncio.sleep(0)
        tasks[1].cancel()  # a waiter that gives up leaves no hole
        limiter.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == ["big0", "small0", "big2", "big3"]
        assert limiter.used == 0 and limiter.waiting == 0

    asyncio.run(main())


def test_make_engine_picks_direct_for_async_backends():
    class AsyncBackend:
        capacity = 7

        async def agenerate(self, request, generation, *, constrained):
            raise RuntimeError("engine down")

    engine = make_engine(AsyncBackend(), Generation(), batch_size=4)
    assert isinstance(engine, DirectEngine) and engine.capacity == 7
    answer = asyncio.run(engine.generate(req(1, "sc"), constrained=False))
    assert isinstance(answer, ModelError) and answer.message == "SC generation failed: RuntimeError: engine down"
    assert isinstance(make_engine(Gate(), Generation(), batch_size=4), BatchingEngine)


def test_fair_limiter_never_freezes_when_a_waiter_is_cancelled_as_the_holder_returns():
    """Capacity 1: H holds, W waits; in one step W is cancelled and H releases and
    asks again. H must get the place (it was free), not queue behind a ghost."""
    async def main():
        limiter = FairLimiter(1)
        await limiter.acquire("h")
        waiter = asyncio.ensure_future(limiter.acquire("w"))
        await asyncio.sleep(0)

        async def holder_returns_and_asks_again():
            limiter.release()
            await limiter.acquire("h")

        again = asyncio.ensure_future(holder_returns_and_asks_again())  # runs before W's except
        waiter.cancel()
        await asyncio.wait_for(again, 2)  # froze before: used 0, H queued behind a cancelled waiter
        assert limiter.used == 1 and limiter.waiting == 0
        newcomer = asyncio.ensure_future(limiter.acquire("n"))
        await asyncio.sleep(0)
        limiter.release()
        await asyncio.wait_for(newcomer, 2)

    asyncio.run(main())
