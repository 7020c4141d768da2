"""The reward service over one ``Judge``: base64 image files -> samples ->
``judge.submit`` (the one scheduler every client shares) -> results in request
order, with the fields of the record ``spatialreward judge`` writes.

Back-pressure: at most ``max_queue`` items are admitted and unfinished at once;
a request that does not fit is refused whole (``Overloaded`` -> 503 with
Retry-After) before any work, so the backlog never grows without bound. The
bound is on items, not on the scheduler's queue of model requests (which it
bounds in turn: at most 2 x passes requests per item, and as many repairs): a
scheduler refusing a request (``QueueFull``) would fail an item already
admitted, half judged; admission refuses whole requests before any work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass

from .. import __version__
from ..errors import InputError
from ..images import load_image
from ..sample import Sample
from .metrics import Metrics
from .protocol import OPTIONAL_FIELDS, RewardRequest

MIB = 1024 * 1024
# A batch of 64 edits as 1024x1024 PNGs: 128 files of ~2 MiB (a photo), base64 (+1/3), JSON around them.
DEFAULT_MAX_BODY_MB = 384
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_QUEUE = 1024
DEFAULT_MAX_IMAGE_MB = 32
# /ready turns false after this many items in a row failed in the model (engine down).
MODEL_FAILURES_NOT_READY = 3
# Requests carrying more base64 than this decode their images off the event loop.
OFFLOAD_BYTES = 1 << 20

_FORMATS = (("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
            ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff")),
            ("WebP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"))


class Overloaded(Exception):
    """The queue cannot take this request now: answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class TooManyItems(Exception):
    """More items in one request than ``max_items`` (413)."""


@dataclass(frozen=True)
class Limits:
    max_items: int = DEFAULT_MAX_ITEMS
    max_queue: int = DEFAULT_MAX_QUEUE  # items admitted and unfinished, all clients together
    max_image_bytes: int = DEFAULT_MAX_IMAGE_MB * MIB
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * MIB

    def validate(self) -> "Limits":
        if min(self.max_items, self.max_queue, self.max_image_bytes, self.max_body_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.max_queue < self.max_items:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_items ({self.max_items}): "
                             "a full-size request must fit in an empty queue")
        return self


def decode_image(data: str, role: str, max_bytes: int) -> bytes:
    """base64 text (optionally a data: URL) -> the image file's bytes, or InputError."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) * 3 // 4 > max_bytes + 3:
        raise InputError(f"{role}: image of about {len(data) * 3 // 4:,} bytes is over the limit of {max_bytes:,}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{role}: not valid base64 ({exc})") from None
    if len(raw) > max_bytes:
        raise InputError(f"{role}: image of {len(raw):,} bytes is over the limit of {max_bytes:,}")
    if not raw:
        raise InputError(f"{role}: empty image data")
    if not any(check(raw) for _, check in _FORMATS):
        raise InputError(f"{role}: not a PNG, JPEG or WebP file")
    return raw


class RewardService:
    def __init__(self, judge, limits: Limits | None = None, *, backend: str | None = None):
        self.judge = judge
        self.limits = (limits or Limits()).validate()
        self.backend_name = backend
        self.threshold = judge.config.threshold
        self.started = time.time()
        self.pending = 0
        self._lock = threading.Lock()
        self.model_failures = 0  # consecutive items failed in the model
        self.last_model_error: str | None = None
        self.draining = False
        self.metrics = Metrics(self)

    # -- state --------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        scheduler = self.judge._scheduler
        return scheduler.queued if scheduler is not None else 0

    @property
    def in_flight(self) -> int:
        scheduler = self.judge._scheduler
        return scheduler.in_flight if scheduler is not None else 0

    def ready(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "shutting down: finishing the items in flight"
        if self.model_failures >= MODEL_FAILURES_NOT_READY:
            return False, (f"the last {self.model_failures} items failed in the model; last error: "
                           f"{self.last_model_error}")
        return True, None

    def info(self) -> dict:
        config = self.judge.config
        return {
            "model": config.model,
            "revision": config.revision,
            "backend": self.backend_name,
            "judge_hash": self.judge.judge_hash,
            "config_hash": self.judge.config_hash,
            "aggregation": dataclasses.asdict(config.aggregation),
            "generation": dataclasses.asdict(config.generation),
            "threshold": self.threshold,
            "limits": dataclasses.asdict(self.limits),
            "version": __version__,
        }

    # -- work -----------------------------------------------------------------------
    def sample(self, item, index: int, sources: dict | None = None) -> Sample:
        """One request item as a Sample; a bad image makes an input error of this item only.

        ``sources``: the request's source images by their base64 text. A source
        shared by several items (a group of edits of one image) is decoded once,
        with the same checks, and shared as a picture."""
        sample = Sample(id=item.id if item.id is not None else str(index), source=None, edited=None,
                        instruction=item.instruction, meta=dict(item.meta or {}))
        try:
            if not item.instruction.strip():
                raise InputError("empty instruction")
            sample.source = self._source(item.source, sources if sources is not None else {})
            sample.edited = decode_image(item.edited, "edited", self.limits.max_image_bytes)
        except InputError as exc:
            sample.error = exc
        return sample

    def _source(self, data: str, sources: dict):
        known = sources.get(data)
        if known is None:
            try:
                known = load_image(decode_image(data, "source", self.limits.max_image_bytes), role="source")
            except InputError as exc:
                known = exc
            sources[data] = known
        if isinstance(known, InputError):
            raise known
        return known

    def _admit(self, count: int) -> None:
        with self._lock:
            if self.draining:
                raise Overloaded("the server is shutting down", retry_after=5)
            if self.pending + count > self.limits.max_queue:
                self.metrics.rejected.inc(count)
                raise Overloaded(f"queue full: {self.pending} items pending, {count} more would exceed "
                                 f"--max-queue {self.limits.max_queue}")
            self.pending += count

    def _finished(self, future, started: float) -> None:
        with self._lock:
            self.pending -= 1
        self.metrics.item_latency.observe(time.perf_counter() - started)
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        self.metrics.items.inc(status=result.status)
        if result.error is not None:
            self.metrics.errors.inc(stage=result.error.stage)
        for judgment in result.sc + result.pq:
            self.metrics.tokens.inc(judgment.tokens or 0)
        if result.error is not None and result.error.stage == "model":
            self.model_failures += 1
            self.last_model_error = result.error.message
        elif result.error is None:
            self.model_failures = 0

    async def score(self, request: RewardRequest) -> list[dict]:
        items = request.items
        if len(items) > self.limits.max_items:
            raise TooManyItems(f"{len(items)} items in one request; the limit is --max-items {self.limits.max_items}")
        size = sum(len(item.source) + len(item.edited) for item in items)
        sources: dict = {}

        def prepare() -> list[Sample]:
            return [self.sample(item, i, sources) for i, item in enumerate(items)]

        # Decoding megabytes of base64 (and the shared sources) would stall every other client's request.
        samples = await asyncio.to_thread(prepare) if size > OFFLOAD_BYTES else prepare()
        self._admit(len(samples))
        order = submission_order(items)
        started = time.perf_counter()
        futures: list = [None] * len(samples)
        for index, future in zip(order, self.judge.submit_many([samples[i] for i in order])):
            future.add_done_callback(lambda f: self._finished(f, started))
            futures[index] = future
        # A client that goes away cancels only its wait: the judge's futures run to the
        # end (and release their queue places), so nothing is lost or left hanging.
        results = await asyncio.gather(*(_awaitable(f) for f in futures))
        wanted = set(request.return_)
        return [self.result(result, item, i, wanted) for i, (result, item) in enumerate(zip(results, items))]

    def result(self, result, item, index: int, wanted: set) -> dict:
        """The record ``judge`` writes for this item, without the images, with the
        request's id and ``score`` (1.0 when reward >= threshold)."""
        record = result.to_record()
        for key in ("source", "edited"):
            record.pop(key, None)
        for key in OPTIONAL_FIELDS:
            if key not in wanted:
                record.pop(key, None)
        if "raw" not in wanted:
            record.pop("raw_failed", None)
        record["id"] = item.id
        record["index"] = index
        reward = record["reward"]
        record["score"] = None if reward is None else (1.0 if reward >= self.threshold else 0.0)
        return record


def submission_order(items) -> list[int]:
    """Indexes in the order to submit: items sharing a source image and an
    instruction kept adjacent (engine prefix caching), groups in order of first
    appearance, request order within a group."""
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(items):
        key = (hashlib.sha1(item.source.encode()).digest(), item.instruction)
        groups.setdefault(key, []).append(index)
    return [index for group in groups.values() for index in group]


def _awaitable(future) -> "asyncio.Future":
    """An asyncio future following a concurrent one, without the power to cancel it."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def copy(done) -> None:
        if waiter.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    future.add_done_callback(lambda done: loop.call_soon_threadsafe(copy, done))
    return waiter
