"""The reward service over one ``Judge``, on the server's own event loop.

A request's path::

    raw body -> parse and validate (a worker thread) -> base64-decode every image
    and read its header (a worker thread) -> admission (items and pixels, before
    any pixel is decoded) -> ``await judge.ajudge`` per item, one flow per
    request -> results in request order

Nothing heavy runs on the event loop: ``/health`` answers while a large request
is parsed and decoded. The body is parsed without one long hold of the GIL (the
long base64 strings are cut out before the JSON parser sees the rest, and each
is decoded in pieces), so the loop gets its turn every few milliseconds.

Admission: at most ``max_queue`` items and ``max_pixels_in_flight`` pixels (the
header sizes of the images of the admitted, unfinished items, every source of
an item counted; a source shared by a request's items counted once) at once,
all clients together. A request that does not fit is refused whole
(``Overloaded`` -> 503 with Retry-After) before any image is decoded; one that
could never fit is ``TooLarge`` (413). Items are decoded in the judge's prepare
pool after admission, a shared source once. An item's ``source`` is one image or
a list of 1 to ``MAX_SOURCES`` (in their order; the protocol model says so).

Fairness: each request is its own flow, so the judge's prepare pool and engine
serve requests round-robin: a 1-item request is not queued behind large ones.

A client that goes away cancels its queued and in-flight work, unless it sent
an ``Idempotency-Key``: then the work is kept for ``idempotency_grace_s`` for a
retry with the same key to pick up; a finished request's results are answered
again to a repeated key from a bounded cache (a key with another body: 422).
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import functools
import hashlib
import io
import json
import logging
import secrets
import time
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from .. import __version__
from ..constants import max_image_pixels
from ..errors import InputError, ModelError, describe
from ..images import _check_size, _own_size_limit, _pillow_warnings_to_log
from ..judge import JudgeResult
from ..policy import ItemsFailed, apply_policy
from ..sample import Sample
from .metrics import Metrics
from .protocol import OPTIONAL_FIELDS, RewardRequest

logger = logging.getLogger("spatialreward.serve")

MIB = 1024 * 1024
MP = 1_000_000  # a megapixel
# A batch of 64 edits as 1024x1024 PNGs: 128 files of ~2 MiB (a photo), base64 (+1/3), JSON around them.
DEFAULT_MAX_BODY_MB = 384
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_QUEUE = 1024
DEFAULT_MAX_IMAGE_MB = 32
# Header pixels of the images in flight: 256 edits of 1024x1024 with their sources ~ 512 MP.
DEFAULT_MAX_PIXELS_IN_FLIGHT_MP = 512
# /ready turns false after this many items in a row failed in the model (engine down).
MODEL_FAILURES_NOT_READY = 3
IDEMPOTENCY_GRACE_S = 30.0  # an abandoned request with a key is kept this long for its retry
IDEMPOTENCY_CACHE = 1024  # finished requests whose results a repeated key gets again
IDEMPOTENCY_TTL_S = 600.0
MAX_KEY_CHARS = 200
DISCONNECT_POLL_S = 0.2  # how often a waiting request checks that its client is still there
# Strings at least this long (the base64 images) are cut out of the body before the JSON parse.
LONG_STRING = 4096
FIND_WINDOW = 1 << 22  # bytes per bytes.find call while scanning a body
B64_CHUNK = 1 << 18  # base64 characters per a2b_base64 call (a multiple of 4)
REQUEST_WORKERS = 2  # threads parsing and decoding request bodies

_FORMATS = (("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
            ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff")),
            ("WebP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"))


class Refusal(Exception):
    """A request the server answers with a status instead of results (503, 413,
    422). Expected, so it leaves the service without its traceback (``_bare``)."""


def _bare(exc: Exception) -> Exception:
    """``exc`` without its traceback: the frames it passed (and what they hold: a
    refused request's decoded images) go now. An asyncio task keeps the traceback
    of its exception apart (``Future._exception_tb``), and an awaiting frame that
    keeps the task forms a cycle with it: freed only by a full collection, which
    ``gc.freeze()`` and the server's long-lived heap make rare."""
    return exc.with_traceback(None)


class Overloaded(Refusal):
    """The server cannot take this request now: answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(Refusal):
    """A request that could never be admitted (413)."""


class TooManyItems(TooLarge):
    """More items in one request than ``max_items`` (413)."""


class InvalidRequest(Refusal):
    """422: ``detail`` is FastAPI's list of validation errors, or one line."""

    def __init__(self, detail):
        super().__init__(detail if isinstance(detail, str) else "invalid request")
        self.detail = detail


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass(frozen=True)
class Limits:
    max_items: int = DEFAULT_MAX_ITEMS
    max_queue: int = DEFAULT_MAX_QUEUE  # items admitted and unfinished, all clients together
    max_image_bytes: int = DEFAULT_MAX_IMAGE_MB * MIB
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * MIB
    max_pixels_in_flight: int = DEFAULT_MAX_PIXELS_IN_FLIGHT_MP * MP  # header pixels of admitted, unfinished items

    def validate(self) -> "Limits":
        if min(self.max_items, self.max_queue, self.max_image_bytes, self.max_body_bytes,
               self.max_pixels_in_flight) < 1:
            raise ValueError("limits must be positive")
        if self.max_queue < self.max_items:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_items ({self.max_items}): "
                             "a full-size request must fit in an empty queue")
        return self


# -- parsing a body (run in a worker thread) ----------------------------------------------

def parse_json_body(body: bytes):
    """The JSON value of ``body``, or ``InvalidRequest`` with FastAPI's 422 errors.

    Long strings without escapes (the base64 images) are cut out of the body
    first and put back after the JSON parse of what remains, so no single call
    holds the GIL for the whole body: the event loop keeps answering."""
    if not body or body.isspace():
        raise InvalidRequest([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    skeleton, table, offsets = _cut_long_strings(body)
    try:
        data = json.loads(skeleton)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(_json_invalid(_body_position(exc.pos, offsets), exc.msg)) from None
    except ValueError as exc:  # not UTF-8 (or -16/-32)
        raise InvalidRequest(_json_invalid(0, str(exc))) from None
    if table:
        try:
            data = _put_back(data, table)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRequest(_json_invalid(0, describe(exc))) from None
    return data


def validation_errors(exc: ValidationError) -> list[dict]:
    """pydantic's errors as FastAPI's 422 body lists them (``loc`` under ``body``)."""
    errors = json.loads(exc.json(include_url=False))
    for error in errors:
        error["loc"] = ["body", *error["loc"]]
    return errors


def parse_request(body: bytes) -> RewardRequest:
    """The request in ``body``, validated as FastAPI would (``json.loads``, then
    the model), or ``InvalidRequest`` with FastAPI's 422 errors (parsed off the loop)."""
    data = parse_json_body(body)
    try:
        return RewardRequest.model_validate(data, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as exc:
        raise InvalidRequest(validation_errors(exc)) from None


def _json_invalid(position: int, message: str) -> list[dict]:
    return [{"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error", "input": {},
             "ctx": {"error": message}}]


def _find(data: bytes, byte: bytes, start: int, end: int | None = None) -> int:
    """``data.find(byte, start, end)`` in windows: each call is short (the GIL)."""
    end = len(data) if end is None else end
    while start < end:
        stop = min(end, start + FIND_WINDOW)
        found = data.find(byte, start, stop)
        if found >= 0:
            return found
        start = stop
    return -1


def _cut_long_strings(body: bytes):
    """(skeleton, table, offsets): ``body`` with each long, escape-free string
    value replaced by a short placeholder string; ``table`` maps a placeholder
    to ``(start, end)`` of the string's content in ``body``; ``offsets`` maps
    skeleton positions back to body positions (for JSON error positions)."""
    if json.detect_encoding(body[:4]) != "utf-8":
        return body, {}, []
    marker = "\0" + secrets.token_hex(6) + ":"
    pieces: list[bytes] = []
    table: dict[str, tuple[int, int]] = {}
    offsets: list[tuple[int, int]] = []  # (skeleton position, body position) after each cut
    last = skeleton_length = pos = 0
    while True:
        opening = _find(body, b'"', pos)
        if opening < 0:
            break
        closing = _find(body, b'"', opening + 1)
        while closing >= 0 and _escaped(body, closing):
            closing = _find(body, b'"', closing + 1)
        if closing < 0:
            break  # unterminated: the JSON parse says so
        pos = closing + 1
        if closing - opening - 1 < LONG_STRING or _find(body, b"\\", opening + 1, closing) >= 0:
            continue
        if body[pos:pos + 64].lstrip()[:1] == b":":
            continue  # a key: kept
        name = f"{marker}{len(table)}"
        placeholder = b'"\\u0000' + name[1:].encode() + b'"'
        pieces.append(body[last:opening])
        pieces.append(placeholder)
        skeleton_length += opening - last + len(placeholder)
        offsets.append((skeleton_length, pos))
        table[name] = (opening + 1, closing)
        last = pos
    if not table:
        return body, {}, []
    pieces.append(body[last:])
    # The strings, decoded once per distinct content: identical images share one str (and later one decode).
    strings: dict[str, str] = {}
    seen: dict[tuple, list[tuple[int, int, str]]] = {}
    for name, (start, end) in table.items():
        raw = body[start:end]
        fingerprint = (len(raw), raw[:32], raw[-32:])
        for other_start, other_end, text in seen.get(fingerprint, ()):
            if body[other_start:other_end] == raw:
                strings[name] = text
                break
        else:
            text = raw.decode("utf-8")
            seen.setdefault(fingerprint, []).append((start, end, text))
            strings[name] = text
    return b"".join(pieces), strings, offsets


def _escaped(data: bytes, index: int) -> bool:
    """Is the quote at ``index`` escaped (an odd run of backslashes before it)?"""
    if not index or data[index - 1] != 0x5C:
        return False
    run, end = 0, index
    while end > 0:  # the run of backslashes, measured in C-speed pieces
        start = max(0, end - 4096)
        piece = data[start:end]
        kept = len(piece.rstrip(b"\\"))
        run += len(piece) - kept
        if kept:
            break
        end = start
    return run % 2 == 1


def _body_position(position: int, offsets: list[tuple[int, int]]) -> int:
    index = bisect_right(offsets, (position, float("inf"))) - 1
    if index < 0:
        return position
    skeleton_at, body_at = offsets[index]
    return body_at + (position - skeleton_at)


def _put_back(value, table: dict[str, str]):
    if isinstance(value, str):
        return table.get(value, value) if value.startswith("\0") else value
    if isinstance(value, dict):
        return {key: _put_back(item, table) for key, item in value.items()}
    if isinstance(value, list):
        return [_put_back(item, table) for item in value]
    return value


def decode_image(data: str, role: str, max_bytes: int) -> bytes:
    """base64 text (optionally a data: URL) -> the image file's bytes, or InputError.
    Decoded in pieces of ``B64_CHUNK`` characters (short holds of the GIL)."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) * 3 // 4 > max_bytes + 3:
        raise InputError(f"{role}: image of about {len(data) * 3 // 4:,} bytes is over the limit of {max_bytes:,}")
    try:
        parts = []
        for start in range(0, len(data), B64_CHUNK):
            chunk = data[start:start + B64_CHUNK]
            if start + B64_CHUNK < len(data) and chunk.endswith("="):
                raise binascii.Error("Excess data after padding")
            parts.append(binascii.a2b_base64(chunk, strict_mode=True))
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{role}: not valid base64 ({exc})") from None
    if len(raw) > max_bytes:
        raise InputError(f"{role}: image of {len(raw):,} bytes is over the limit of {max_bytes:,}")
    if not raw:
        raise InputError(f"{role}: empty image data")
    if not any(check(raw) for _, check in _FORMATS):
        raise InputError(f"{role}: not a PNG, JPEG or WebP file")
    return raw


def image_pixels(raw: bytes, role: str) -> int:
    """Width x height from the image file's header (nothing is decoded), with the
    checks ``load_image`` makes on it (decompression bombs, zero size, aspect)."""
    name = f"<{len(raw):,} bytes>"
    try:
        with _own_size_limit(), _pillow_warnings_to_log(name):
            image = Image.open(io.BytesIO(raw))
        with image:
            size = image.size
    except UnidentifiedImageError as exc:
        raise InputError(f"{role} {name}: not a readable image ({exc.__class__.__name__})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{role} {name}: corrupt or truncated image ({exc})") from None
    _check_size(size, max_image_pixels(), role, name)
    return size[0] * size[1]


def item_sources(item) -> list[str]:
    """An item's source images (base64 texts) in their order: one, or its list (none: text-to-image)."""
    if item.source is None:
        return []
    return list(item.source) if isinstance(item.source, list) else [item.source]


def submission_order(items) -> list[int]:
    """Indexes in the order to submit: items sharing their source image(s) and an
    instruction kept adjacent (engine prefix caching), groups in order of first
    appearance, request order within a group."""
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((tuple(item_sources(item)), item.instruction), []).append(index)
    return [index for group in groups.values() for index in group]


# -- the service ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Group:
    """A source image shared by items of one request: its pixels count once."""

    pixels: int
    refs: int = 0


@dataclass(eq=False)
class _Charge:
    """What one admitted item holds: a queue place, its edited image's pixels, a share of each of its sources."""

    pixels: int
    groups: tuple[_Group, ...] = ()
    released: bool = False


@dataclass
class Decoded:
    """A request with its images decoded from base64 (not yet from their file format)."""

    ids: list  # the request items' ids (None when not given)
    wanted: set
    samples: list[Sample]
    charges: list[_Charge]
    order: list[int]  # submission order
    sources: list[int] = dataclasses.field(default_factory=list)  # each item's number of source images
    groups: list = dataclasses.field(default_factory=list)  # each item's group for on_error="neutral"

    @property
    def pixels(self) -> int:
        groups = {id(g): g.pixels for c in self.charges for g in c.groups}
        return sum(c.pixels for c in self.charges) + sum(groups.values())


@dataclass(eq=False)
class _Job:
    """One request's work, shared by every attempt with its idempotency key."""

    key: str | None
    digest: bytes | None
    task: asyncio.Task
    waiters: int = 0
    timer: asyncio.TimerHandle | None = None
    results: dict | None = None  # the response body once finished
    finished_at: float | None = None


class RewardService:
    def __init__(self, judge, limits: Limits | None = None, *, backend: str | None = None,
                 idempotency_grace_s: float = IDEMPOTENCY_GRACE_S, idempotency_cache: int = IDEMPOTENCY_CACHE,
                 idempotency_ttl_s: float = IDEMPOTENCY_TTL_S, request_workers: int = REQUEST_WORKERS):
        self.judge = judge
        self.limits = (limits or Limits()).validate()
        self.backend_name = backend
        self.threshold = judge.config.threshold
        self.started = time.time()
        self.pending = 0  # items admitted and not finished
        self.admitted_pixels = 0  # header pixels of their images
        self.model_failures = 0  # consecutive items failed in the model
        self.last_model_error: str | None = None
        self.draining = False
        self.idempotency_grace_s = idempotency_grace_s
        self.idempotency_cache = idempotency_cache
        self.idempotency_ttl_s = idempotency_ttl_s
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._workers = ThreadPoolExecutor(max_workers=request_workers, thread_name_prefix="spatialreward-request")
        max_image_pixels()  # a bad SPATIALREWARD_MAX_IMAGE_PIXELS fails at start, not per request
        self.metrics = Metrics(self)

    # -- state --------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self.judge.queued

    @property
    def in_flight(self) -> int:
        return self.judge.in_flight

    @property
    def prepare_queue(self) -> int:
        """Images waiting for the judge's prepare pool."""
        images = getattr(self.judge, "images", None)
        return int(getattr(images, "waiting", 0) or 0)

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
            "model": self.judge.model,
            "protocol": config.protocol,
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

    # -- an HTTP request: idempotency, disconnects ------------------------------------------
    async def rewards(self, body: list[bytes] | bytes, *, key: str | None = None, disconnected=None) -> dict:
        """The response body for one POST /v1/rewards body (a list of chunks is consumed).

        ``disconnected``: an async callable, true once the client has gone; the
        request then ends with ``ClientGone`` and its work is cancelled (with a
        ``key``: after ``idempotency_grace_s`` unless a retry has picked it up)."""
        if key is not None and (not key or len(key) > MAX_KEY_CHARS or not key.isprintable()):
            raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
        chunks = body
        body, digest = await self._off_loop(_join, chunks, key is not None)
        if isinstance(chunks, list):
            chunks.clear()  # the body is held once
        job = None
        if key is not None:
            self._prune()
            job = self._jobs.get(key)
            if job is not None and job.digest != digest:
                raise InvalidRequest(f"Idempotency-Key {key!r} was already used with a different body")
            if job is not None and job.results is not None:  # finished: the same answer again
                self._jobs.move_to_end(key)
                self.metrics.replays.inc()
                return job.results
        attached = job is not None  # still in progress: this attempt waits for the same work
        if job is None:
            job = _Job(key, digest, self._spawn(self.run(body)))
            job.task.add_done_callback(lambda _task, job=job: self._job_done(job))
            if key is not None:
                self._jobs[key] = job
        del body
        try:
            results = await self._wait(job, disconnected)
        finally:
            job = None  # a failure's traceback holds this frame: not the job, its task and their exception
        if attached:
            self.metrics.replays.inc()
        return results

    async def _wait(self, job: _Job, disconnected) -> list[dict]:
        job.waiters += 1
        if job.timer is not None:  # a retry has come for abandoned work: it is kept
            job.timer.cancel()
            job.timer = None
        gone = False
        try:
            while not job.task.done():
                await asyncio.wait({job.task}, timeout=DISCONNECT_POLL_S if disconnected else None)
                if not job.task.done() and disconnected is not None and await disconnected():
                    gone = True
                    break
        except asyncio.CancelledError:  # the route itself was cancelled: as a client gone
            job.waiters -= 1
            self._abandon(job)
            raise
        job.waiters -= 1
        if gone:
            cancelled = self._abandon(job)
            if cancelled is not None:
                await asyncio.wait({cancelled})  # the items' work withdrawn, their places given back
            raise ClientGone()
        task, job = job.task, None
        if task.cancelled():
            raise Overloaded("the request was cancelled: the server is shutting down", retry_after=5)
        problem = task.exception()
        if problem is not None:
            # Raised afresh, without the frames that hold the request's bodies and images:
            # the task, its exception and this frame would otherwise form a cycle that keeps
            # a refused request's megabytes alive until the garbage collector runs.
            del task
            raise _bare(problem)
        return task.result()

    def _abandon(self, job: _Job) -> asyncio.Task | None:
        """A waiter has gone. When it was the last: its work is cancelled now (the
        task returned), or, with a key, after the grace period unless a retry comes."""
        if job.waiters or job.task.done():
            return None
        if job.key is not None:
            job.timer = asyncio.get_running_loop().call_later(self.idempotency_grace_s, self._expire, job)
            return None
        job.task.cancel()
        return job.task

    def _expire(self, job: _Job) -> None:
        job.timer = None
        if not job.waiters and not job.task.done():
            job.task.cancel()

    def _job_done(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        task = job.task
        if not task.cancelled() and task.exception() is None:
            job.results = task.result()
            job.finished_at = time.monotonic()
        elif job.key is not None and self._jobs.get(job.key) is job:
            del self._jobs[job.key]  # refused or cancelled: a retry starts afresh

    def _prune(self) -> None:
        """Drop finished entries past their time, and the oldest past the cache size."""
        now = time.monotonic()
        finished = [key for key, job in self._jobs.items() if job.finished_at is not None]
        excess = len(finished) - self.idempotency_cache
        for index, key in enumerate(finished):
            if index < excess or now - self._jobs[key].finished_at > self.idempotency_ttl_s:
                del self._jobs[key]

    async def _off_loop(self, function, *args):
        """``function(*args)`` on the request workers: a few threads, so that the event
        loop's thread is not one of many waiting for the GIL (its latency grows with them)."""
        return await asyncio.get_running_loop().run_in_executor(self._workers, functools.partial(function, *args))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Shutdown (after uvicorn finished the requests in flight): work nobody waits
        for any more (abandoned, kept for a retry) is cancelled; then the judge is closed."""
        self.draining = True
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.judge.aclose()
        self._workers.shutdown(wait=False)

    # -- the work -------------------------------------------------------------------------
    async def run(self, body: bytes) -> dict:
        """Parse (off the loop), then ``respond``: the response body."""
        try:
            request = await self._off_loop(parse_request, body)
            del body
            responding = self.respond(request)
            del request  # held by respond() alone, which lets its base64 text go once decoded
            return await responding
        except Refusal as exc:  # the task keeps what it raises: not the frames that hold the request
            raise _bare(exc) from None

    async def respond(self, request: RewardRequest, *, route: str = "/v1/rewards") -> dict:
        """``{"results": [...]}``, and the request's ``on_error`` lists when it asked for them."""
        policy = request.on_error
        groups: list = []
        results = await self.score(request, groups=groups)
        response = {"results": results}
        if policy is not None:
            response.update(self.policy_lists(results, policy, groups, route=route))
        return response

    def policy_lists(self, results: list[dict], policy: str, groups=None, *, route: str) -> dict:
        """``rewards`` and ``scores`` under ``policy`` with ``failed``; under
        ``raise`` (or ``neutral`` with no valid item) ``error`` instead of the
        lists. The failed items are counted in ``/metrics`` and logged."""
        errors = [r.get("error") for r in results]
        out: dict = {"on_error": policy}
        try:
            rewards = apply_policy([r["reward"] for r in results], policy, groups=groups or None, errors=errors)
            scores = apply_policy([r["score"] for r in results], policy, groups=groups or None, errors=errors,
                                  what="score")
            out.update(rewards=rewards.values, scores=scores.values, failed=rewards.failed)
        except ItemsFailed as exc:
            out.update(failed=exc.failed, error=str(exc))
        failed = out["failed"]
        if failed:
            self.metrics.policy_failures.inc(len(failed), route=route, policy=policy)
            logger.warning("%s: %d of %d items could not be judged (items %s); on_error=%s", route, len(failed),
                           len(results), failed[:10], policy)
        return out

    async def score(self, request: RewardRequest, *, groups: list | None = None) -> list[dict]:
        """Judge a validated request: decode its images from base64 and read their
        headers (off the loop), admit it by items and pixels, judge its items as one
        flow; the results in request order. ``groups`` (a list) receives each
        item's group key for ``on_error="neutral"``."""
        count = len(request.items)
        if count > self.limits.max_items:
            raise TooManyItems(f"{count} items in one request; the limit is --max-items {self.limits.max_items}")
        self._refuse_if_full(count, 0)  # before decoding anything
        decoded = await self._off_loop(self.decode, request)
        del request
        if groups is not None:
            groups.extend(decoded.groups)
        try:
            return await self.judge_decoded(decoded)
        except Refusal as exc:  # refused: the decoded images go now, not with the traceback's frames
            del decoded
            raise _bare(exc) from None

    def decode(self, request: RewardRequest) -> Decoded:
        """Each item as a Sample holding its image files' bytes (its sources: one,
        or a list in their order), with the pixels its headers give; a bad image
        makes an input error of its item only. A source shared by several items
        (at any place in their lists) is decoded (and counted) once."""
        limit = self.limits.max_image_bytes
        images: dict[tuple[str, str], tuple] = {}
        groups: dict[str, _Group] = {}

        def image(text: str, kind: str, role: str) -> tuple[bytes, int]:
            key = (kind, text)
            known = images.get(key)
            if known is None:
                try:
                    raw = decode_image(text, kind, limit)
                    known = (raw, image_pixels(raw, kind))
                except InputError as exc:
                    known = exc
                images[key] = known
            if isinstance(known, InputError):  # the message names this item's role ("source 2")
                raise InputError(role + known.message[len(kind):]) if role != kind else known
            return known

        samples, charges, counts, keys = [], [], [], []
        tokens: dict[str, object] = {}  # one token per distinct source text: the neutral group keys
        for index, item in enumerate(request.items):
            sample = Sample(id=item.id if item.id is not None else str(index), source=None, edited=None,
                            instruction=item.instruction, meta=dict(item.meta or {}))
            texts = item_sources(item)
            counts.append(len(texts))
            # its group for on_error="neutral": the instruction and every source text (decodable or not),
            # each as a token object: the key holds no copy of the text
            key = (item.instruction, *(tokens.setdefault(text, object()) for text in texts))
            charge = _Charge(0)
            try:
                if not item.instruction.strip():
                    raise InputError("empty instruction")
                sources, item_groups = [], {}
                for k, text in enumerate(texts):
                    raw, pixels = image(text, "source", "source" if len(texts) == 1 else f"source {k + 1}")
                    sources.append(raw)
                    group = groups.get(text)
                    if group is None:
                        group = groups[text] = _Group(pixels)
                    item_groups[text] = group  # an item's repeated source counts once
                sample.source = None if not sources else sources[0] if len(sources) == 1 else sources
                sample.edited, edited_pixels = image(item.edited, "edited", "edited" if texts else "image")
                for group in item_groups.values():
                    group.refs += 1
                charge = _Charge(edited_pixels, tuple(item_groups.values()))
            except InputError as exc:
                sample.error = exc
                sample.source = sample.edited = None
            samples.append(sample)
            charges.append(charge)
            keys.append(key)
        return Decoded(ids=[item.id for item in request.items], wanted=set(request.return_), samples=samples,
                       charges=charges, order=submission_order(request.items), sources=counts, groups=keys)

    async def judge_decoded(self, decoded: Decoded) -> list[dict]:
        self._admit(decoded)
        charges = decoded.charges
        flow = object()  # this request: served round-robin with the others
        order = decoded.order
        try:
            # ajudge in submission order: the engine serves a flow's requests in that order.
            outcomes = await asyncio.gather(*(self._one(decoded.samples[i], flow, charges[i]) for i in order))
        except asyncio.CancelledError:
            left = sum(not charge.released for charge in charges)
            if left:
                self.metrics.cancelled.inc(left)
            raise
        finally:
            for charge in charges:
                self._release(charge)
        results: list = [None] * len(order)
        for index, outcome in zip(order, outcomes):
            results[index] = outcome
        counts = decoded.sources or [1] * len(results)
        return [self.result(result, decoded.ids[i], i, decoded.wanted, sources=counts[i])
                for i, result in enumerate(results)]

    def _refuse_if_full(self, count: int, pixels: int) -> None:
        limits = self.limits
        if self.draining:
            raise Overloaded("the server is shutting down", retry_after=5)
        if pixels > limits.max_pixels_in_flight:
            raise TooLarge(f"the request's images have {pixels / MP:,.1f} megapixels; the limit is "
                           f"--max-pixels-in-flight-mp {limits.max_pixels_in_flight / MP:g}")
        if self.pending + count > limits.max_queue:
            self.metrics.rejected.inc(count)
            raise Overloaded(f"queue full: {self.pending} items pending, {count} more would exceed "
                             f"--max-queue {limits.max_queue}")
        if pixels and self.admitted_pixels + pixels > limits.max_pixels_in_flight:
            self.metrics.rejected.inc(count)
            raise Overloaded(f"pixel budget full: {self.admitted_pixels / MP:,.1f} megapixels of images in flight, "
                             f"{pixels / MP:,.1f} more would exceed --max-pixels-in-flight-mp "
                             f"{limits.max_pixels_in_flight / MP:g}")

    def _admit(self, decoded: Decoded) -> None:
        pixels = decoded.pixels
        self._refuse_if_full(len(decoded.samples), pixels)
        self.pending += len(decoded.samples)
        self.admitted_pixels += pixels

    def _release(self, charge: _Charge) -> None:
        if charge.released:
            return
        charge.released = True
        self.pending -= 1
        self.admitted_pixels -= charge.pixels
        for group in charge.groups:
            group.refs -= 1
            if group.refs == 0:
                self.admitted_pixels -= group.pixels

    async def _one(self, sample: Sample, flow, charge: _Charge) -> JudgeResult:
        started = time.perf_counter()
        try:
            result = await self._ajudge(sample, flow)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - never an unanswered item
            result = JudgeResult(sample=sample, error=ModelError(f"judging failed: {describe(exc)}"), judge=self.judge)
        self._release(charge)
        sample.source = sample.edited = None  # the image files' bytes are no longer needed
        self._count(result, started)
        return result

    async def _ajudge(self, sample: Sample, flow) -> JudgeResult:
        runner = getattr(self.judge, "_runner", None)
        if runner is not None and runner.loop is not asyncio.get_running_loop():
            # A judge already driven from its own loop thread (the Python API's submit or
            # score): reached there; cancelling this await cancels it there too.
            return await asyncio.wrap_future(self.judge.submit(sample, flow=flow))
        return await self.judge.ajudge(sample, flow=flow)

    def _count(self, result: JudgeResult, started: float) -> None:
        self.metrics.item_latency.observe(time.perf_counter() - started)
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

    def result(self, result, item_id, index: int, wanted: set, *, sources: int = 1) -> dict:
        """The record ``judge`` writes for this item, without the images, with the
        request's id, ``sources`` (the item's number of source images) and
        ``score`` (1.0 when reward >= threshold)."""
        record = result.to_record()
        for key in ("source", "edited"):
            record.pop(key, None)
        for key in OPTIONAL_FIELDS:
            if key not in wanted:
                record.pop(key, None)
        if "raw" not in wanted:
            record.pop("raw_failed", None)
        record["id"] = item_id
        record["index"] = index
        record["sources"] = sources
        reward = record["reward"]
        record["score"] = None if reward is None else (1.0 if reward >= self.threshold else 0.0)
        return record


def _join(chunks, digest: bool) -> tuple[bytes, bytes | None]:
    body = chunks if isinstance(chunks, bytes) else b"".join(chunks)
    return body, (hashlib.sha256(body).digest() if digest else None)
