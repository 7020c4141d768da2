"""Clients of ``spatialreward serve``: ``RewardClient`` (threads) and ``AsyncRewardClient`` (asyncio).

``evaluate(input_images, output_image, meta_datas)`` is the released reward
client's call and answer, ``(scores, rewards, reasoning, meta_data)``, so
training code switches by changing an import and a URL; ``input_images[i]`` is
the list of sample i's source images, all of them sent in their order (1 to 8:
a multi-reference edit). It speaks JSON to
``POST /v1/rewards`` (the released client pickles to its proxy; this server
never unpickles). ``score(items)`` returns typed ``RewardResult``s.

The released client's constructor forms all work: ``RewardClient()`` (the
server named by ``SPATIALREWARD_URL``, else ``127.0.0.1:23456``, the released
default and ``serve``'s default port), ``RewardClient("127.0.0.1", 23456,
timeout=600, max_retries=2)``, ``RewardClient(proxy_host=..., proxy_port=...)``,
and a URL, ``RewardClient("http://gpu1:23456")``. ``max_retries`` has the
released meaning: tries in all. ``meta_datas[i]`` may be a dict, a JSON string
of one, or a plain string taken as the instruction; ``prompt`` stands in for a
missing ``instruction`` (flow_grpo and Flow-Factory call it that).

A failed item is never a 0.0: a 0.0 is a real, very bad reward and would teach
the policy to avoid whatever it did; an engine outage would become a training
signal. What ``evaluate`` puts in ``rewards`` and ``scores`` for it is the
caller's ``on_error`` policy (``spatialreward.policy``): ``none`` (the default:
``None``), ``nan``, ``raise`` (``ItemsFailed``) or ``neutral`` (the mean of
its group's valid rewards: a zero advantage); under every policy
``meta_data[i]["error"]`` says why it failed and the count is logged. A
request that fails as a whole after its tries (server down) fails each of its
items (stage ``server``), so the same policy answers it.

Images are sent as they are: a path's file bytes, bytes as given, a PIL image
or an array as PNG (lossless); never re-encoded lossily.

A request is retried (``tenacity``) on 502/503/504 and on transport errors, up
to ``max_retries`` more times, waiting the server's ``Retry-After`` (at most
30 s) or else an exponential backoff with jitter. Every POST carries an
``Idempotency-Key``, the same on each retry of one chunk, so the server judges
a repeated request once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import httpx
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from . import constants
from .constants import MAX_SOURCES
from .policy import ItemsFailed, PolicyOutcome, apply_policy, check_policy

logger = logging.getLogger("spatialreward.client")

TOKEN_ENV = "SPATIALREWARD_SERVE_TOKEN"
RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_AFTER_S = 30.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


class RewardError(Exception):
    """A request failed as a whole (after the retries), or was refused (4xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnavailable(RewardError):
    """The server could not be reached, or answered 502/503/504, on every try."""


class _RetryableStatus(RewardError):
    """A 502/503/504 answer: retried; ``retry_after`` is the server's Retry-After in seconds, if it gave one."""

    def __init__(self, response: httpx.Response):
        failure = _failure(response)
        super().__init__(str(failure), status=failure.status)
        value = response.headers.get("retry-after", "")
        self.retry_after = min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableStatus))


class _WaitRetryAfter(wait_base):
    """The server's Retry-After when it sent one; otherwise ``fallback``."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
            return exc.retry_after
        return self.fallback(retry_state)


class ItemFailed(RewardError):
    """``on_error="raise"``: an item could not be judged."""

    def __init__(self, result: "RewardResult"):
        error = result.error or {}
        super().__init__(f"item {result.index} (id {result.id!r}) failed at {error.get('stage')}: {error.get('message')}")
        self.result = result


@dataclass
class RewardResult:
    """One item's result. ``reward``/``score`` are None when it failed (``error`` says why)."""

    index: int
    id: str | None
    status: str
    reward: float | None
    score: float | None
    overall: float | None = None
    sc: float | None = None
    pq: float | None = None
    scores: dict | None = None
    error: dict | None = None  # {"stage": "input" | "model" | "parse", "message": ...}
    regions: list | None = None
    reasoning: dict | None = None
    raw: dict | None = None
    sources: int | None = None  # the item's number of source images, as the server counted them
    meta: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict, repr=False)  # every field the server sent

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_record(cls, record: dict) -> "RewardResult":
        keys = ("overall", "sc", "pq", "scores", "error", "regions", "reasoning", "raw", "sources")
        return cls(index=record["index"], id=record.get("id"), status=record["status"], reward=record.get("reward"),
                   score=record.get("score"), meta=record.get("meta") or {}, record=record,
                   **{k: record.get(k) for k in keys})


def encode_image(image: Any) -> str:
    """base64 of the image file: a path's bytes, bytes as given, PIL images and arrays as PNG."""
    if isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        from PIL import Image

        if not isinstance(image, Image.Image):
            import numpy as np

            array = np.asarray(image)
            if array.dtype != np.uint8:
                raise TypeError(f"an image array must be uint8 HxWxC, not {array.dtype}")
            image = Image.fromarray(array)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode("ascii")


def encode_sources(source: Any, where: str = "source") -> str | list[str]:
    """The ``source`` of an item on the wire: one image as one base64 string; a
    list or tuple of 1 to ``MAX_SOURCES`` images as a list of them in order (a
    one-element list goes as one string, as any server takes it)."""
    if not isinstance(source, (list, tuple)):
        return encode_image(source)
    if not 1 <= len(source) <= MAX_SOURCES:
        raise ValueError(f"{where}: {len(source)} source images; an edit takes 1 to {MAX_SOURCES}")
    encoded = [encode_image(image) for image in source]
    return encoded[0] if len(encoded) == 1 else encoded


def _item(item, index: int) -> dict:
    """One item on the wire: an edit ``{source, edited, instruction}`` (or a
    ``(source, edited, instruction)`` tuple), or a text-to-image item ``{prompt,
    image[, relations]}`` for a server judging ``--protocol t2i-spatial``."""
    if isinstance(item, dict):
        if "image" in item:
            unknown = set(item) - {"id", "prompt", "instruction", "image", "relations", "meta"}
            if unknown:
                raise TypeError(f"item {index}: unknown keys {sorted(unknown)} for a text-to-image item")
            prompt = item.get("prompt", item.get("instruction"))
            out = {"prompt": prompt, "image": encode_image(item["image"])}
            for key in ("id", "meta", "relations"):
                if item.get(key) is not None:
                    out[key] = item[key]
            return out
        unknown = set(item) - {"id", "source", "edited", "instruction", "meta"}
        if unknown:
            raise TypeError(f"item {index}: unknown keys {sorted(unknown)}")
        out = {"source": encode_sources(item["source"], f"item {index}"), "edited": encode_image(item["edited"]),
               "instruction": item["instruction"]}
        for key in ("id", "meta"):
            if item.get(key) is not None:
                out[key] = item[key]
        return out
    source, edited, instruction = item
    return {"source": encode_sources(source, f"item {index}"), "edited": encode_image(edited),
            "instruction": instruction}


def _base_url(host_or_url: str | None, port: int | None, proxy_host: str | None, proxy_port: int | None) -> str:
    """The server's URL from any of the released client's forms (see the module doc)."""
    if host_or_url is not None and "://" in str(host_or_url):
        if port is not None or proxy_host is not None or proxy_port is not None:
            raise TypeError("give either a URL or a host and port, not both")
        return str(host_or_url).rstrip("/")
    if host_or_url is not None and proxy_host is not None:
        raise TypeError("the host is given twice (positionally and as proxy_host)")
    if port is not None and proxy_port is not None:
        raise TypeError("the port is given twice (positionally and as proxy_port)")
    host = host_or_url if host_or_url is not None else proxy_host
    port = port if port is not None else proxy_port
    if host is None and port is None:
        if constants.SERVER_URL:
            url = constants.SERVER_URL
            return (url if "://" in url else f"http://{url}").rstrip("/")
        host, port = constants.DEFAULT_SERVE_HOST, constants.DEFAULT_SERVE_PORT
    host = host or constants.DEFAULT_SERVE_HOST
    if port is None and host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():  # "gpu1:23456"
        host, port = host.rsplit(":", 1)
    port = constants.DEFAULT_SERVE_PORT if port is None else int(port)
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}"


def parse_meta(meta: Any, index: int) -> tuple[dict, str | None, str | None]:
    """One ``meta_datas`` entry as the released server reads it: a dict, a JSON
    string of a dict, or a plain string (the instruction). Returns the meta as a
    dict, the instruction (``instruction``, else ``prompt``), and why there is
    none (None when there is one)."""
    if meta is None:
        meta = {}
    if isinstance(meta, (bytes, bytearray)):
        meta = bytes(meta).decode("utf-8", errors="replace")
    if isinstance(meta, str):
        text = meta.strip()
        parsed = None
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        meta = parsed if isinstance(parsed, dict) else {"instruction": meta}
    if not isinstance(meta, dict):
        return {"meta": meta}, None, f"meta_datas[{index}] is a {type(meta).__name__}, not a dict, JSON string or text"
    instruction = meta.get("instruction")
    if instruction is None or (isinstance(instruction, str) and not instruction.strip()):
        instruction = meta.get("prompt", instruction)
    if not isinstance(instruction, str) or not instruction.strip():
        return dict(meta), None, f"meta_datas[{index}] has no 'instruction' (or 'prompt') text"
    return dict(meta), instruction, None


def _released_items(input_images: Sequence, output_image: Sequence, meta_datas: Sequence):
    """The released client's arguments as items (every one of a sample's input
    images as its sources, in their order; a single image is one source), the
    metas as dicts, and, per sample, why it cannot be sent (None when it can)."""
    if not len(input_images) == len(output_image) == len(meta_datas):
        raise ValueError(f"input_images ({len(input_images)}), output_image ({len(output_image)}) and meta_datas "
                         f"({len(meta_datas)}) must have one entry per sample")
    items, metas, problems = [], [], []
    for i, (sources, edited, meta) in enumerate(zip(input_images, output_image, meta_datas)):
        meta, instruction, problem = parse_meta(meta, i)
        if problem is None and isinstance(sources, (list, tuple)) and not 1 <= len(sources) <= MAX_SOURCES:
            problem = f"input_images[{i}] holds {len(sources)} images; an edit takes 1 to {MAX_SOURCES}"
        items.append({"source": list(sources) if isinstance(sources, (list, tuple)) else sources,
                      "edited": edited, "instruction": instruction})
        metas.append(meta)
        problems.append(problem)
    return items, metas, problems


def _input_failure(index: int, message: str) -> "RewardResult":
    """An item the client could not send: an input error, never a score."""
    return RewardResult(index=index, id=None, status="error", reward=None, score=None,
                        error={"stage": "input", "message": message})


def _server_failure(index: int, error: Exception) -> "RewardResult":
    """An item of a request that failed as a whole after its tries."""
    return RewardResult(index=index, id=None, status="error", reward=None, score=None,
                        error={"stage": "server", "message": str(error)})


def group_key(item: dict) -> tuple:
    """An item's group for ``on_error="neutral"``: its instruction and its
    source images (as sent); a text-to-image item's, its prompt. Samples of one
    prompt in a GRPO group share both."""
    if "image" in item:
        return (item.get("prompt"), ())
    source = item.get("source")
    sources = tuple(source) if isinstance(source, list) else (source,)
    return (item.get("instruction"), sources)


def _released_answer(results: list["RewardResult"], metas: list[dict], policy: str, groups: list | None):
    """``(scores, rewards, reasoning, meta_data)`` under ``policy``; a failed
    item's meta says why (``error``) and what the policy gave it."""
    errors = [None if r.ok else r.error for r in results]
    rewards = apply_policy([r.reward for r in results], policy, groups=groups, errors=errors)
    scores = apply_policy([r.score for r in results], policy, groups=groups, errors=errors, what="score")
    reasoning, meta_out = [], []
    for result, meta in zip(results, metas):
        entry = {**meta, "original_index": result.index}
        if result.ok:
            reasoning.append(_reasoning_text(result.reasoning))
        else:
            entry["error"] = result.error
            entry["on_error"] = policy
            if result.index in rewards.neutral:
                entry["neutral_reward"] = rewards.neutral[result.index]
            reasoning.append(f"error ({result.error['stage']}): {result.error['message']}")
        meta_out.append(entry)
    _log_failures(rewards)
    return scores.values, rewards.values, reasoning, meta_out


def _log_failures(outcome: PolicyOutcome) -> None:
    if outcome.failed:
        logger.warning("%d of %d items could not be judged (items %s); on_error=%s gave them %s",
                       len(outcome.failed), len(outcome.values), outcome.failed[:10], outcome.policy,
                       {"none": "None", "nan": "NaN", "neutral": "their group's mean reward"}[outcome.policy])


def _reasoning_text(reasoning: dict | None) -> str:
    if not reasoning:
        return ""
    return "\n".join(f"{k.upper()}: {v}" for k, v in reasoning.items() if v)


class _Common:
    def __init__(self, host_or_url: str | None = None, port: int | None = None, timeout: float = 300.0,
                 max_retries: int = 3, *, proxy_host: str | None = None, proxy_port: int | None = None,
                 token: str | None = None, connect_timeout: float = 10.0, backoff_s: float = 0.5,
                 chunk_size: int = 64, on_error: str = "none"):
        self.on_error = check_policy(on_error)
        if int(max_retries) < 1:
            raise ValueError("max_retries is the number of tries in all (the released client's meaning): at least 1")
        self.base_url = _base_url(host_or_url, port, proxy_host, proxy_port)
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_retries = int(max_retries)
        self.backoff_s = backoff_s
        self.chunk_size = chunk_size
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _encode(self, items: Sequence, problems: Sequence | None, keys: dict | None,
                tolerant: bool) -> tuple[list, list]:
        """Every item encoded before anything is sent: ``(encoded, results)``,
        ``encoded[i]`` the wire form of item i (None when it is not sent) and
        ``results[i]`` its known failure (None when it is sent). An item that
        cannot be encoded (a missing file, an image of the wrong type, a source
        list of the wrong length) is an ``input`` failure of its own when
        ``tolerant``, else raises here, before any request."""
        encoded: list = [None] * len(items)
        results: list = [None] * len(items)
        for index, item in enumerate(items):
            if problems and problems[index] is not None:
                results[index] = _input_failure(index, problems[index])
                continue
            try:
                encoded[index] = _item(item, index)
            except (OSError, TypeError, ValueError, KeyError) as exc:
                if not tolerant:
                    raise
                results[index] = _input_failure(index, f"cannot send item {index}: {_describe(exc)}")
                continue
            if keys is not None:
                keys[index] = _digest_key(encoded[index])
        return encoded, results

    def _chunks(self, encoded: list, want: Sequence[str]) -> list[tuple[list[int], dict]]:
        """The requests to send: (indexes, payload), ``chunk_size`` items each."""
        send = [i for i, item in enumerate(encoded) if item is not None]
        out = []
        for k in range(0, len(send), self.chunk_size):
            indexes = send[k:k + self.chunk_size]
            payload = {"items": [encoded[i] for i in indexes]}
            if want:
                payload["return"] = list(want)
            out.append((indexes, payload))
        return out

    def _retry_policy(self) -> dict:
        """tenacity arguments: ``max_retries`` tries in all; the wait before retry k
        (0-based) is Retry-After, else backoff_s * 2**k * U(0.5, 1)."""
        half = self.backoff_s / 2
        backoff = wait_exponential(multiplier=half, exp_base=2) + wait_random_exponential(multiplier=half, exp_base=2)
        return dict(stop=stop_after_attempt(self.max_retries), wait=_WaitRetryAfter(backoff),
                    retry=retry_if_exception(_retryable), reraise=True)

    def _answer(self, response: httpx.Response, indexes: Sequence[int]) -> list[RewardResult]:
        """The results of a 200; a retryable status raises ``_RetryableStatus``, any other fails."""
        if response.status_code == 200:
            return self._results(response, indexes)
        if response.status_code in RETRY_STATUSES:
            raise _RetryableStatus(response)
        raise _failure(response)

    def _gave_up(self, error: Exception, tries: int) -> RewardError:
        return ServerUnavailable(f"{self.base_url}/v1/rewards failed after {tries} tries: {error}",
                                 status=getattr(error, "status", None))

    def _results(self, response: httpx.Response, indexes: Sequence[int]) -> list[RewardResult]:
        records = response.json()["results"]
        if len(records) != len(indexes):
            raise RewardError(f"server answered {len(records)} results for {len(indexes)} items")
        results = []
        for offset, (record, index) in enumerate(zip(records, indexes)):
            if record.get("index") != offset:
                raise RewardError(f"server answered result {record.get('index')} in place {offset}")
            results.append(RewardResult.from_record({**record, "index": index}))
        return results

    def _check(self, results: list[RewardResult]) -> list[RewardResult]:
        if self.on_error == "raise":
            for result in results:
                if not result.ok:
                    raise ItemFailed(result)
        return results

    def _policy(self, on_error: str | None) -> str:
        return self.on_error if on_error is None else check_policy(on_error)


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def _digest_key(item: dict) -> tuple:
    """``group_key`` of an encoded item, with the sources' base64 text as digests."""
    instruction, sources = group_key(item)
    return instruction, tuple(hashlib.sha1(s.encode("ascii")).hexdigest() for s in sources)


def _failure(response: httpx.Response) -> RewardError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:300]
    return RewardError(f"HTTP {response.status_code}: {detail}", status=response.status_code)


class RewardClient(_Common):
    """Blocking client; one connection pool, reused (thread-safe). Takes every
    constructor form of the released client (see the module doc)."""

    def __init__(self, host_or_url: str | None = None, port: int | None = None, timeout: float = 300.0,
                 max_retries: int = 3, **kwargs):
        super().__init__(host_or_url, port, timeout, max_retries, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def score(self, items: Iterable, *, want: Sequence[str] = ()) -> list[RewardResult]:
        """Judge ``items`` (dicts with source, edited, instruction[, id, meta], or
        (source, edited, instruction) tuples; ``source`` one image or a list of 1
        to 8 in their order); one result per item, in order. A failed item has
        reward None (``on_error="raise"``: ``ItemFailed``); a request that fails
        as a whole after its tries raises ``ServerUnavailable``."""
        items = list(items)
        return self._check(self._judge(items, want))

    def evaluate(self, input_images, output_image, meta_datas, server_type: str | None = None, *,
                 on_error: str | None = None):
        """The released client's call: ``input_images[i]`` the list of sample i's
        source images (all sent, in order), ``output_image[i]`` its edited image,
        ``meta_datas[i]`` its meta (a dict, a JSON string, or the instruction as
        text). Returns ``(scores, rewards, reasoning, meta_data)``, lists in
        request order; a failed item's reward and score follow ``on_error``
        (default: the client's, ``none``) and its meta says why."""
        policy = self._policy(on_error)
        if not len(output_image):
            return [], [], [], []
        items, metas, problems = _released_items(input_images, output_image, meta_datas)
        keys: dict = {}
        results = self._judge(items, ("reasoning",), problems, keys=keys, whole_failures=True)
        groups = [keys.get(i, (items[i]["instruction"], None)) for i in range(len(items))]
        return _released_answer(results, metas, policy, groups)

    def _judge(self, items: Sequence, want: Sequence[str], problems=None, *, keys=None,
               whole_failures: bool = False) -> list[RewardResult]:
        """One result per item, in order. ``whole_failures`` (the trainer doors):
        an item that cannot be sent, or a request that fails as a whole after its
        tries, fails its items (stages ``input``, ``server``) and the rest are
        still judged; otherwise those raise (before anything is sent, for a bad item)."""
        encoded, results = self._encode(items, problems, keys, tolerant=whole_failures)
        chunks = self._chunks(encoded, want)
        del encoded
        for indexes, payload in chunks:
            try:
                part = self._post(payload, indexes)
            except ServerUnavailable as error:
                if not whole_failures:
                    raise
                part = [_server_failure(index, error) for index in indexes]
            for result in part:
                results[result.index] = result
        return results

    def _post(self, payload: dict, indexes: Sequence[int]) -> list[RewardResult]:
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex}  # the same on every retry of this chunk
        tries = 0
        try:
            for attempt in Retrying(**self._retry_policy()):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    return self._answer(self._http.post("/v1/rewards", json=payload, headers=headers), indexes)
        except (httpx.TransportError, _RetryableStatus) as error:
            raise self._gave_up(error, tries) from error
        raise AssertionError("unreachable")  # tenacity either returns or raises

    def ping(self) -> bool:
        try:
            return self._http.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> dict:
        response = self._http.get("/v1/info")
        if response.status_code != 200:
            raise _failure(response)
        return response.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRewardClient(_Common):
    """asyncio client; the chunks of one call are sent concurrently."""

    def __init__(self, host_or_url: str | None = None, port: int | None = None, timeout: float = 300.0,
                 max_retries: int = 3, **kwargs):
        super().__init__(host_or_url, port, timeout, max_retries, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    async def score(self, items: Iterable, *, want: Sequence[str] = ()) -> list[RewardResult]:
        items = list(items)
        return self._check(await self._judge(items, want))

    async def evaluate(self, input_images, output_image, meta_datas, server_type: str | None = None, *,
                       on_error: str | None = None):
        policy = self._policy(on_error)
        if not len(output_image):
            return [], [], [], []
        items, metas, problems = _released_items(input_images, output_image, meta_datas)
        keys: dict = {}
        results = await self._judge(items, ("reasoning",), problems, keys=keys, whole_failures=True)
        groups = [keys.get(i, (items[i]["instruction"], None)) for i in range(len(items))]
        return _released_answer(results, metas, policy, groups)

    async def _judge(self, items: Sequence, want: Sequence[str], problems=None, *, keys=None,
                     whole_failures: bool = False) -> list[RewardResult]:
        # reading files and encoding PNGs run off the event loop
        encoded, results = await asyncio.to_thread(self._encode, items, problems, keys, whole_failures)
        chunks = self._chunks(encoded, want)
        del encoded

        async def one(indexes, payload):
            try:
                return await self._post(payload, indexes)
            except ServerUnavailable as error:
                if not whole_failures:
                    raise
                return [_server_failure(index, error) for index in indexes]

        tasks = [asyncio.ensure_future(one(indexes, payload)) for indexes, payload in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one chunk failed: the others are not left running
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for part in parts:
            for result in part:
                results[result.index] = result
        return results

    async def _post(self, payload: dict, indexes: Sequence[int]) -> list[RewardResult]:
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex}  # the same on every retry of this chunk
        tries = 0
        try:
            async for attempt in AsyncRetrying(**self._retry_policy()):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    response = await self._http.post("/v1/rewards", json=payload, headers=headers)
                    return self._answer(response, indexes)
        except (httpx.TransportError, _RetryableStatus) as error:
            raise self._gave_up(error, tries) from error
        raise AssertionError("unreachable")  # tenacity either returns or raises

    async def ping(self) -> bool:
        try:
            return (await self._http.get("/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def info(self) -> dict:
        response = await self._http.get("/v1/info")
        if response.status_code != 200:
            raise _failure(response)
        return response.json()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
