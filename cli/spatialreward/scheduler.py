"""One queue in front of one backend, kept saturated.

Every caller (the judge's samples, the reward server's clients) submits single
requests and gets a future. Worker threads, ``concurrency`` of them, take what
is queued -- up to ``max_batch`` requests of the same decoding mode, oldest
first -- and hand it to ``backend.generate``. An in-process model batches
(transformers: ``--batch-size``, one worker); an engine behind HTTP takes one
request per call with many calls in flight (``--concurrency``); vLLM in process
takes large batches and batches further itself.

A batch that raises, or answers with a different number of answers than it
got, is retried one request at a time, so one bad request fails only itself and
no answer can land on another request. A request that fails alone resolves to a
``ModelError`` (never a score). ``max_queue`` bounds the queue: ``submit``
raises ``QueueFull`` instead of growing it (back-pressure for servers).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from .backends.base import Answer
from .config import Generation
from .errors import ModelError, describe
from .requests import Request

log = logging.getLogger("spatialreward")


class QueueFull(Exception):
    """The scheduler's queue is at ``max_queue``: try again later."""


@dataclass
class _Item:
    request: Request
    constrained: bool
    future: Future


class Scheduler:
    def __init__(self, backend, generation: Generation, *, max_batch: int, concurrency: int = 1,
                 max_queue: int | None = None):
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be >= 1")
        self.backend = backend
        self.generation = generation
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.in_flight = 0  # requests inside backend.generate right now
        self._workers = [
            threading.Thread(target=self._work, name=f"spatialreward-scheduler-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    # -- callers ----------------------------------------------------------------
    def submit(self, request: Request, *, constrained: bool = False) -> "Future[Answer | ModelError]":
        """Queue one request; its future resolves to an ``Answer`` or a ``ModelError``."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests queued")
            self._queue.append(_Item(request, constrained, future))
            self._cond.notify()
        return future

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers once the queue is empty (``cancel``: fail what is queued)."""
        with self._cond:
            self._closed = True
            if cancel:
                while self._queue:
                    self._queue.popleft().future.set_result(ModelError("cancelled: the scheduler was closed"))
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    # -- workers ----------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            # Oldest first; the same decoding mode only (a grammar applies to a whole batch).
            kept: deque[_Item] = deque()
            scanned = 0
            while self._queue and len(batch) < self.max_batch and scanned < 4 * self.max_batch:
                item = self._queue.popleft()
                scanned += 1
                (batch if item.constrained == first.constrained else kept).append(item)
            self._queue.extendleft(reversed(kept))
            self.in_flight += len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                answers = self._generate([i.request for i in batch], constrained=batch[0].constrained)
            except BaseException as exc:  # noqa: BLE001 - never leave a future unresolved
                answers = [ModelError(f"scheduler failure: {exc.__class__.__name__}: {exc}")] * len(batch)
            with self._cond:
                self.in_flight -= len(batch)
            for item, answer in zip(batch, answers):
                item.future.set_result(answer)

    def _generate(self, requests: list[Request], *, constrained: bool) -> list[Answer | ModelError]:
        """One generate() for the batch; if it raises or does not return exactly
        one answer per request, each request alone."""
        try:
            answers = list(self.backend.generate(requests, self.generation, constrained=constrained))
            if len(answers) == len(requests):
                return answers
            problem = f"backend returned {len(answers)} answers for {len(requests)} requests"
        except Exception as exc:  # noqa: BLE001 - any model failure becomes per-request errors
            problem = describe(exc)
        if len(requests) == 1:
            return [ModelError(f"{requests[0].kind.upper()} generation failed: {problem}")]
        log.warning("batch of %d failed (%s); retrying one by one", len(requests), problem)
        return [self._generate([r], constrained=constrained)[0] for r in requests]
