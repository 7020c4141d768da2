"""The scheduler: batches what is queued, keeps calls in flight, retries a
failed batch one by one, never leaves a future unresolved."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from spatialreward.backends.base import Answer
from spatialreward.config import Generation
from spatialreward.errors import ModelError
from spatialreward.requests import Request
from spatialreward.scheduler import QueueFull, Scheduler

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


def blocked(backend, **kwargs) -> Scheduler:
    """A scheduler whose one worker is busy with request 0 until released."""
    sched = Scheduler(backend, Generation(), **kwargs)
    first = sched.submit(req(0))
    assert backend.started.wait(5)
    return sched, first


def test_batches_what_is_queued_oldest_first_up_to_max_batch():
    backend = Gate()
    sched, first = blocked(backend, max_batch=3)
    futures = [sched.submit(req(i)) for i in range(1, 8)]
    backend.release.set()
    assert first.result(5).text == "prompt 0"
    assert [f.result(5).text for f in futures] == [f"prompt {i}" for i in range(1, 8)]
    assert [len(p) for p, _ in backend.calls] == [1, 3, 3, 1]
    assert [p for p, _ in backend.calls][1] == ["prompt 1", "prompt 2", "prompt 3"]
    sched.close()


def test_constrained_and_free_requests_never_share_a_batch():
    backend = Gate()
    sched, first = blocked(backend, max_batch=8)
    futures = [sched.submit(req(i), constrained=i % 2 == 0) for i in range(1, 7)]
    backend.release.set()
    assert all(isinstance(f.result(5), Answer) for f in futures)
    assert backend.calls[1:] == [(["prompt 1", "prompt 3", "prompt 5"], False), (["prompt 2", "prompt 4", "prompt 6"], True)]
    sched.close()


def test_a_failed_batch_is_retried_one_by_one():
    backend = Gate(fail_when=lambda prompts: "prompt 2" in prompts)
    sched, _ = blocked(backend, max_batch=4)
    futures = [sched.submit(req(i, "sc")) for i in range(1, 5)]
    backend.release.set()
    outcomes = [f.result(5) for f in futures]
    assert [o.text for o in outcomes if isinstance(o, Answer)] == ["prompt 1", "prompt 3", "prompt 4"]
    error = outcomes[1]
    assert isinstance(error, ModelError) and error.message == "SC generation failed: RuntimeError: boom"
    assert [p for p, _ in backend.calls][1:] == [
        ["prompt 1", "prompt 2", "prompt 3", "prompt 4"], ["prompt 1"], ["prompt 2"], ["prompt 3"], ["prompt 4"]]
    sched.close()


@pytest.mark.parametrize("answers_for", [lambda n: n - 1, lambda n: n + 1 if n == 1 else n - 1])
def test_a_wrong_number_of_answers_never_shifts_answers(answers_for):
    backend = Gate(answers_for=answers_for)
    backend.release.set()
    sched = Scheduler(backend, Generation(), max_batch=4)
    outcomes = [f.result(5) for f in [sched.submit(req(i)) for i in range(3)]]
    assert all(isinstance(o, ModelError) and "answers for 1 requests" in o.message for o in outcomes)
    sched.close()


def test_concurrency_keeps_calls_in_flight():
    backend = Gate()
    sched = Scheduler(backend, Generation(), max_batch=1, concurrency=4)
    futures = [sched.submit(req(i)) for i in range(8)]
    deadline = time.monotonic() + 5
    while backend.peak < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.peak == 4 and sched.in_flight == 4
    backend.release.set()
    assert [f.result(5).text for f in futures] == [f"prompt {i}" for i in range(8)]
    sched.close()


def test_bounded_queue_pushes_back():
    backend = Gate()
    sched, _ = blocked(backend, max_batch=1, max_queue=2)
    sched.submit(req(1))
    sched.submit(req(2))
    with pytest.raises(QueueFull):
        sched.submit(req(3))
    backend.release.set()
    sched.close()


def test_close_with_cancel_fails_what_is_queued():
    backend = Gate()
    sched, first = blocked(backend, max_batch=1)
    queued = sched.submit(req(1))
    threading.Timer(0.2, backend.release.set).start()
    sched.close(cancel=True)
    assert isinstance(queued.result(5), ModelError) and "cancelled" in queued.result().message
    assert first.result(5).text == "prompt 0"
    with pytest.raises(RuntimeError):
        sched.submit(req(2))
