"""Clients of ``spatialreward serve``: ``RewardClient`` (threads) and ``AsyncRewardClient`` (asyncio).

``evaluate(input_images, output_image, meta_datas)`` is the released reward
client's call and answer, ``(scores, rewards, reasoning, meta_data)``, so
training code switches by changing an import and a URL. It speaks JSON to
``POST /v1/rewards`` (the released client pickles to its proxy; this server
never unpickles). ``score(items)`` returns typed ``RewardResult``s.

A failed item is never a 0.0: a 0.0 is a real, very bad reward and would teach
the policy to avoid whatever it did; an engine outage would become a training
signal. Its reward and score are ``None`` (``evaluate``: in ``rewards`` and
``scores``; the reason in ``meta_data[i]["error"]`` and ``reasoning[i]``), NaN
where a list of floats is required (the trainer adapters), or an ``ItemFailed``
exception with ``on_error="raise"``.

Images are sent as they are: a path's file bytes, bytes as given, a PIL image
or an array as PNG (lossless); never re-encoded lossily.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import httpx

TOKEN_ENV = "SPATIALREWARD_SERVE_TOKEN"
RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_AFTER_S = 30.0


class RewardError(Exception):
    """A request failed as a whole (after the retries), or was refused (4xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
    meta: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict, repr=False)  # every field the server sent

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_record(cls, record: dict) -> "RewardResult":
        keys = ("overall", "sc", "pq", "scores", "error", "regions", "reasoning", "raw")
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


def _item(item, index: int) -> dict:
    if isinstance(item, dict):
        unknown = set(item) - {"id", "source", "edited", "instruction", "meta"}
        if unknown:
            raise TypeError(f"item {index}: unknown keys {sorted(unknown)}")
        out = {"source": encode_image(item["source"]), "edited": encode_image(item["edited"]),
               "instruction": item["instruction"]}
        for key in ("id", "meta"):
            if item.get(key) is not None:
                out[key] = item[key]
        return out
    source, edited, instruction = item
    return {"source": encode_image(source), "edited": encode_image(edited), "instruction": instruction}


def _base_url(base_url: str | None, proxy_host: str | None, proxy_port: int | None) -> str:
    if base_url is None:
        if proxy_host is None and proxy_port is None:
            raise TypeError("give the server's URL, e.g. RewardClient('http://127.0.0.1:8000'), or proxy_host/proxy_port")
        base_url = f"http://{proxy_host or '127.0.0.1'}:{proxy_port or 8000}"
    return base_url.rstrip("/")


def _released_items(input_images: Sequence, output_image: Sequence, meta_datas: Sequence[dict]) -> list[dict]:
    """The released client's arguments as items: one source (the first of each
    sample's input images), the edited image, the instruction from its meta data."""
    if not len(input_images) == len(output_image) == len(meta_datas):
        raise ValueError(f"input_images ({len(input_images)}), output_image ({len(output_image)}) and meta_datas "
                         f"({len(meta_datas)}) must have one entry per sample")
    items = []
    for i, (sources, edited, meta) in enumerate(zip(input_images, output_image, meta_datas)):
        source = sources[0] if isinstance(sources, (list, tuple)) else sources
        instruction = (meta or {}).get("instruction")
        if not isinstance(instruction, str):
            raise ValueError(f"meta_datas[{i}] has no 'instruction' text")
        items.append({"source": source, "edited": edited, "instruction": instruction})
    return items


def _released_answer(results: list[RewardResult], meta_datas: Sequence[dict]):
    scores, rewards, reasoning, meta_out = [], [], [], []
    for result, meta in zip(results, meta_datas):
        scores.append(result.score)
        rewards.append(result.reward)
        entry = {**(meta or {}), "original_index": result.index}
        if result.ok:
            reasoning.append(_reasoning_text(result.reasoning))
        else:
            entry["error"] = result.error
            reasoning.append(f"error ({result.error['stage']}): {result.error['message']}")
        meta_out.append(entry)
    return scores, rewards, reasoning, meta_out


def _reasoning_text(reasoning: dict | None) -> str:
    if not reasoning:
        return ""
    return "\n".join(f"{k.upper()}: {v}" for k, v in reasoning.items() if v)


class _Common:
    def __init__(self, base_url: str | None = None, *, proxy_host: str | None = None, proxy_port: int | None = None,
                 token: str | None = None, timeout: float = 300.0, connect_timeout: float = 10.0,
                 max_retries: int = 3, backoff_s: float = 0.5, chunk_size: int = 64, on_error: str = "none"):
        if on_error not in ("none", "raise"):
            raise ValueError("on_error must be 'none' or 'raise'")
        self.base_url = _base_url(base_url, proxy_host, proxy_port)
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.chunk_size = chunk_size
        self.on_error = on_error
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _payload(self, items: Sequence, start: int, want: Sequence[str]) -> dict:
        payload = {"items": [_item(item, start + i) for i, item in enumerate(items)]}
        if want:
            payload["return"] = list(want)
        return payload

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and response.headers.get("retry-after", "").isdigit():
            return min(float(response.headers["retry-after"]), MAX_RETRY_AFTER_S)
        return self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)

    def _results(self, response: httpx.Response, start: int, count: int) -> list[RewardResult]:
        records = response.json()["results"]
        if len(records) != count:
            raise RewardError(f"server answered {len(records)} results for {count} items")
        results = []
        for offset, record in enumerate(records):
            if record.get("index") != offset:
                raise RewardError(f"server answered result {record.get('index')} in place {offset}")
            record = {**record, "index": start + offset}
            results.append(RewardResult.from_record(record))
        return results

    def _check(self, results: list[RewardResult]) -> list[RewardResult]:
        if self.on_error == "raise":
            for result in results:
                if not result.ok:
                    raise ItemFailed(result)
        return results

    def _chunks(self, items: Sequence) -> list[tuple[int, Sequence]]:
        return [(start, items[start:start + self.chunk_size]) for start in range(0, len(items), self.chunk_size)]


def _failure(response: httpx.Response) -> RewardError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:300]
    return RewardError(f"HTTP {response.status_code}: {detail}", status=response.status_code)


class RewardClient(_Common):
    """Blocking client; one connection pool, reused (thread-safe)."""

    def __init__(self, base_url: str | None = None, **kwargs):
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def score(self, items: Iterable, *, want: Sequence[str] = ()) -> list[RewardResult]:
        """Judge ``items`` (dicts with source, edited, instruction[, id, meta], or
        (source, edited, instruction) tuples); one result per item, in order."""
        items = list(items)
        results: list[RewardResult] = []
        for start, chunk in self._chunks(items):
            results += self._post(self._payload(chunk, start, want), start, len(chunk))
        return self._check(results)

    def evaluate(self, input_images, output_image, meta_datas, server_type: str | None = None):
        """The released client's call: ``(scores, rewards, reasoning, meta_data)``,
        lists in request order; a failed item has score and reward None."""
        if not len(output_image):
            return [], [], [], []
        results = self.score(_released_items(input_images, output_image, meta_datas), want=("reasoning",))
        return _released_answer(results, meta_datas)

    def _post(self, payload: dict, start: int, count: int) -> list[RewardResult]:
        attempt = 0
        while True:
            response = None
            try:
                response = self._http.post("/v1/rewards", json=payload)
                if response.status_code == 200:
                    return self._results(response, start, count)
                if response.status_code not in RETRY_STATUSES:
                    raise _failure(response)
                error: Exception = _failure(response)
            except httpx.TransportError as exc:
                error = exc
            if attempt >= self.max_retries:
                raise RewardError(f"{self.base_url}/v1/rewards failed after {attempt + 1} tries: {error}",
                                  status=getattr(error, "status", None)) from error
            time.sleep(self._delay(attempt, response))
            attempt += 1

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

    def __init__(self, base_url: str | None = None, **kwargs):
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    async def score(self, items: Iterable, *, want: Sequence[str] = ()) -> list[RewardResult]:
        items = list(items)
        parts = await asyncio.gather(*(self._post(self._payload(chunk, start, want), start, len(chunk))
                                       for start, chunk in self._chunks(items)))
        return self._check([result for part in parts for result in part])

    async def evaluate(self, input_images, output_image, meta_datas, server_type: str | None = None):
        if not len(output_image):
            return [], [], [], []
        results = await self.score(_released_items(input_images, output_image, meta_datas), want=("reasoning",))
        return _released_answer(results, meta_datas)

    async def _post(self, payload: dict, start: int, count: int) -> list[RewardResult]:
        attempt = 0
        while True:
            response = None
            try:
                response = await self._http.post("/v1/rewards", json=payload)
                if response.status_code == 200:
                    return self._results(response, start, count)
                if response.status_code not in RETRY_STATUSES:
                    raise _failure(response)
                error: Exception = _failure(response)
            except httpx.TransportError as exc:
                error = exc
            if attempt >= self.max_retries:
                raise RewardError(f"{self.base_url}/v1/rewards failed after {attempt + 1} tries: {error}",
                                  status=getattr(error, "status", None)) from error
            await asyncio.sleep(self._delay(attempt, response))
            attempt += 1

    async def ping(self) -> bool:
        try:
            return (await self._http.get("/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
