"""Engines as async calls: ``await engine.generate(request, constrained=..., flow=...)``.

Every backend is driven through one asynchronous interface, on one event loop:

- a backend with ``agenerate(request, generation, *, constrained)`` (the
  OpenAI-compatible servers on ``httpx.AsyncClient``, vLLM in process on
  ``AsyncLLM``) is called once per request, up to ``capacity`` at once
  (``DirectEngine``); the engine batches continuously across every caller;
- a backend with only the synchronous ``generate(requests)`` (transformers,
  the scripted test backend, older plugins) sits behind a batching shim
  (``BatchingEngine``): requests wait in a queue, up to ``max_batch`` of one
  decoding mode go to one ``generate()`` call on the shim's own thread(s),
  ``concurrency`` calls at a time.

Fairness: each request names a ``flow`` (a reward-server request, a judge
run); waiting requests are served round-robin across flows, and within a flow
in the order of their ``order`` key (the judge passes its input order: the
head of a run goes first, and items sharing a prefix stay together), so a
small request is not queued behind a large one.

Failures never cross requests: a batch that raises, or answers with another
number of answers, is retried one request at a time; a request that still
fails resolves to a ``ModelError`` (never a score). A cancelled request leaves
the queue (its caller went away); one already inside an engine call is
abandoned there (the synchronous call cannot be interrupted) or cancelled in
the engine (``agenerate``).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .backends.base import Answer, batch_limit, concurrency_of
from .config import Generation
from .errors import ModelError, describe
from .requests import Request

log = logging.getLogger("spatialreward")

DEFAULT_FLOW = "default"


_arrival = itertools.count()


class FairQueue:
    """Items by flow: ``take`` serves flows round-robin; within a flow, the
    lowest ``order`` first (arrival order by default)."""

    def __init__(self):
        self._flows: OrderedDict[object, list] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, flow, item, order=None) -> None:
        key = (order if order is not None else (), next(_arrival))
        bisect.insort(self._flows.setdefault(flow, []), _Entry(key, item))
        self._size += 1

    def take(self, accept=lambda item: True):
        """The next item (round-robin over flows) that ``accept`` takes, or None.
        The flow served moves to the back of the rotation."""
        for flow in list(self._flows):
            items = self._flows[flow]
            for index, entry in enumerate(items):
                if accept(entry.item):
                    del items[index]
                    self._size -= 1
                    if items:
                        self._flows.move_to_end(flow)
                    else:
                        del self._flows[flow]
                    return entry.item
        return None

    def remove(self, flow, item) -> bool:
        items = self._flows.get(flow)
        if items is None:
            return False
        for index, entry in enumerate(items):
            if entry.item is item:
                del items[index]
                self._size -= 1
                if not items:
                    del self._flows[flow]
                return True
        return False


class _Entry:
    __slots__ = ("key", "item")

    def __init__(self, key, item):
        self.key, self.item = key, item

    def __lt__(self, other: "_Entry") -> bool:
        return self.key < other.key


class FairLimiter:
    """At most ``capacity`` holders at once; waiters are let in round-robin by flow."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.used = 0
        self._waiting = FairQueue()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, flow=DEFAULT_FLOW, order=None) -> None:
        if self.used < self.capacity and not len(self._waiting):
            self.used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.put(flow, waiter, order)
        try:
            await waiter
        except asyncio.CancelledError:
            if self._waiting.remove(flow, waiter):
                # It left the queue only now: a holder that came meanwhile may have queued
                # behind it although a place was free. Let waiters in up to the capacity.
                self._wake()
            elif waiter.done() and not waiter.cancelled():
                self.release()  # it was let in just as it was cancelled: pass the place on
            raise

    def release(self) -> None:
        waiter = self._waiting.take(lambda w: not w.done())
        if waiter is not None:
            waiter.set_result(None)  # the place passes straight to it
        else:
            self.used -= 1

    def _wake(self) -> None:
        while self.used < self.capacity:
            waiter = self._waiting.take(lambda w: not w.done())
            if waiter is None:
                return
            self.used += 1
            waiter.set_result(None)

    def slot(self, flow=DEFAULT_FLOW, order=None) -> "_Slot":
        return _Slot(self, flow, order)


class _Slot:
    def __init__(self, limiter: FairLimiter, flow, order):
        self.limiter, self.flow, self.order = limiter, flow, order

    async def __aenter__(self):
        await self.limiter.acquire(self.flow, self.order)

    async def __aexit__(self, *exc):
        self.limiter.release()


def _failure(request: Request, problem: str) -> ModelError:
    return ModelError(f"{request.kind.upper()} generation failed: {problem}")


class DirectEngine:
    """A backend with ``agenerate``: one call per request, ``capacity`` at once."""

    def __init__(self, backend, generation: Generation, *, capacity: int):
        self.backend = backend
        self.generation = generation
        self.capacity = capacity
        self.max_batch = 1
        self._limiter = FairLimiter(capacity)
        self.closed = False

    @property
    def queued(self) -> int:
        return self._limiter.waiting

    @property
    def in_flight(self) -> int:
        return self._limiter.used

    async def generate(self, request: Request, *, constrained: bool, flow=DEFAULT_FLOW,
                       order=None) -> Answer | ModelError:
        if self.closed:
            return ModelError(f"{request.kind.upper()} not sent: the judge is closed")
        async with self._limiter.slot(flow, order):
            if self.closed:  # closed while it waited for a place
                return ModelError(f"{request.kind.upper()} not sent: the judge is closed")
            try:
                return await self.backend.agenerate(request, self.generation, constrained=constrained)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any engine failure is this request's error
                return _failure(request, describe(exc))

    async def aclose(self) -> None:
        self.closed = True
        closer = getattr(self.backend, "aclose", None)
        if closer is not None:
            await closer()


@dataclass(eq=False)
class _Item:
    request: Request
    constrained: bool
    future: asyncio.Future
    flow: object = field(default=DEFAULT_FLOW)


class BatchingEngine:
    """The batching shim over a synchronous ``generate(requests)``: what is queued
    when a worker is free goes out as one batch (up to ``max_batch``, one decoding
    mode, round-robin over flows), on the shim's own thread(s)."""

    def __init__(self, backend, generation: Generation, *, max_batch: int, concurrency: int = 1):
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be >= 1")
        self.backend = backend
        self.generation = generation
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.capacity = max_batch * concurrency
        self._queue = FairQueue()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="spatialreward-generate")
        self.in_flight = 0
        self.closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _start(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._workers = [asyncio.get_running_loop().create_task(self._work(), name=f"spatialreward-batcher-{i}")
                             for i in range(self.concurrency)]

    async def generate(self, request: Request, *, constrained: bool, flow=DEFAULT_FLOW,
                       order=None) -> Answer | ModelError:
        if self.closed:
            return ModelError(f"{request.kind.upper()} not sent: the judge is closed")
        self._start()
        item = _Item(request, constrained, asyncio.get_running_loop().create_future(), flow)
        self._queue.put(flow, item, order)
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._queue.remove(flow, item)  # still queued: it never reaches the model
            raise

    def _take(self) -> list[_Item]:
        first = self._queue.take(lambda i: not i.future.done())
        if first is None:
            return []
        batch = [first]
        while len(batch) < self.max_batch:
            item = self._queue.take(lambda i: not i.future.done() and i.constrained == first.constrained)
            if item is None:
                break
            batch.append(item)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._take()
            if not batch:
                if self.closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self.in_flight += len(batch)
            try:
                answers = await loop.run_in_executor(
                    self._executor, self._generate, [i.request for i in batch], batch[0].constrained)
            except asyncio.CancelledError:  # the loop is stopping: nothing waits unresolved
                for item in batch:
                    if not item.future.done():
                        item.future.set_result(ModelError("cancelled: the judge was closed"))
                raise
            except Exception as exc:  # noqa: BLE001 - never leave a request unresolved
                answers = [ModelError(f"batch failure: {describe(exc)}")] * len(batch)
            finally:
                self.in_flight -= len(batch)
            for item, answer in zip(batch, answers):
                if not item.future.done():
                    item.future.set_result(answer)

    def _generate(self, requests: list[Request], constrained: bool) -> list[Answer | ModelError]:
        """One generate() for the batch; if it raises or does not return exactly
        one answer per request, each request alone (on this thread)."""
        try:
            answers = list(self.backend.generate(requests, self.generation, constrained=constrained))
            if len(answers) == len(requests):
                return answers
            problem = f"backend returned {len(answers)} answers for {len(requests)} requests"
        except Exception as exc:  # noqa: BLE001 - any model failure becomes per-request errors
            problem = describe(exc)
        if len(requests) == 1:
            return [_failure(requests[0], problem)]
        log.warning("batch of %d failed (%s); retrying one by one", len(requests), problem)
        return [self._generate([r], constrained)[0] for r in requests]

    async def aclose(self) -> None:
        """Stop taking work: what is queued fails as cancelled; a batch running finishes."""
        self.closed = True
        while True:
            item = self._queue.take()
            if item is None:
                break
            if not item.future.done():
                item.future.set_result(ModelError(f"{item.request.kind.upper()} not sent: the judge was closed"))
        if self._wakeup is not None:
            self._wakeup.set()
            await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, lambda: self._executor.shutdown(wait=True))


def make_engine(backend, generation: Generation, *, batch_size: int):
    """The async engine over ``backend``: direct when it has ``agenerate``, else the batching shim."""
    if callable(getattr(backend, "agenerate", None)):
        capacity = max(1, int(getattr(backend, "capacity", None) or concurrency_of(backend)))
        return DirectEngine(backend, generation, capacity=capacity)
    return BatchingEngine(backend, generation, max_batch=batch_limit(backend, batch_size),
                          concurrency=concurrency_of(backend))
