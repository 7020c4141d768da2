"""Any OpenAI-compatible chat server as the model: ``vllm serve``, vLLM data
parallel behind one URL, SGLang, LMDeploy; several servers share the load.

    spatialreward judge m.jsonl -o s.jsonl --backend openai --base-url http://gpu1:8000/v1 \\
        [--base-url http://gpu2:8000/v1 ...] [--api-key-env VAR] [--concurrency 32]

Fidelity: each request is the published chat turn, in order (SC: source image,
edited image, text; PQ: edited image, text). Every image is resized on our side
to exactly the size and with the resampling of the Qwen3-VL processor under the
judge's pixel budget (``pixels.resize_for_model``) and sent as a lossless PNG
data URL, so the server's processor leaves it as it is. Decoding is explicit:
``temperature`` (0 = greedy, sent as such), ``top_p``, ``top_k``, ``max_tokens``
and the request's own ``seed``; the stop tokens are the chat template's (the
server's own); special tokens the model writes are kept in the text, as in the
transformers path. Constrained requests carry the grammar of their kind: by
default vLLM's ``structured_outputs: {"grammar": EBNF}``, the very grammar the
transformers path compiles from the JSON schema (no free whitespace, strict;
vLLM ignores a request's own ``disable_any_whitespace``, so sending the schema
would let whitespace fill the answer); or OpenAI's ``response_format`` with the
JSON schema (``structured_field="response_format"``, for servers that take it;
their whitespace rules are the server's).

At load, one clear line (EngineError, exit 3) when: the API key variable is not
set; a server cannot be reached; the model is not served (the line lists what
is); the server's max model length is too small for the pixel budget; the
server takes fewer than two images per prompt; the server's image processor
would resize an image that is already inside the budget (e.g. vLLM's default
``min_pixels`` for Qwen3-VL is 65536, above the published 3136: small images
would be enlarged). The last two are found with two probe requests (two tiny
images, then two at the budget's maximum; one output token each).

Load balancing and failures: requests are asynchronous (``agenerate``, on
``httpx.AsyncClient`` with one pooled client per endpoint, at most
``concurrency`` requests in flight in all); each goes to the live endpoint with
the fewest requests in flight. Connection errors, 429 and 5xx are retried with
exponential backoff (bounded; ``tenacity``). A sick request is told from a sick
server: a request that keeps failing while other requests succeed fails alone
(its edit gets a ``model`` error) and the endpoint stays; an endpoint leaves the
rotation when it cannot be connected to, or when ``dead_after`` different
requests fail on it in a row with no success between them (a server-wide
error), and comes back as soon as a probe (``GET /models``, every 0.5 s
doubling up to ``cooldown_s``) answers. When no endpoint is live, or the
retries run out, or the server refuses the request (4xx) or does not answer
within ``request_timeout``, the request fails: the judge records a
``model``-stage error, never a score. At start, several endpoints start the run
when at least one answers (the others are named, one line each, and probed); a
single endpoint that does not answer is a start-up error.

Prepare once: ``prepare_image`` (run by the judge's prepare stage, once per
distinct image) resizes to the budget and encodes the PNG data URL; the SC and
PQ requests of an edit, and the candidates of a group, share that one encoding.

Identity: ``fingerprint`` is ``openai:<served model id>`` and ``dtype`` is
``server``. The judge hash therefore names the backend kind and the served
model, so results of this backend and of the in-process transformers (or vLLM)
backend never resume into each other, even for the same weights: engines differ
in kernels and numerics, and silently mixing two engines' judgments in one
results file is worse than judging again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

from PIL import Image

from ..config import Generation
from ..constants import DEFAULT_MODEL
from ..errors import ConfigError, EngineError, describe
from ..pixels import PROMPT_TOKENS, context_needed, image_tokens, resize_for_model, smart_resize
from ..requests import Request
from ..structured import CHARS_PER_TOKEN, grammar_for, local_chars_per_token, schema_for
from .base import Answer

log = logging.getLogger("spatialreward")

DEFAULT_CONCURRENCY = 32
DEFAULT_REQUEST_TIMEOUT_S = 300.0
STRUCTURED_FIELDS = ("vllm", "response_format")
CONNECTIONS_PER_CLIENT = 4  # an endpoint's connections, split over clients of this many
STARTUP_TIMEOUT_S = 30.0  # /models and the probes at load: a live server answers them in well under that


class EndpointsDown(RuntimeError):
    """No endpoint is in the rotation."""


class EngineRequestError(RuntimeError):
    """A request failed for good (refused, timed out, or retries exhausted)."""


class _Retry(Exception):
    """One attempt failed in a way worth retrying (connection, 429, 5xx)."""

    def __init__(self, endpoint: "Endpoint", problem: str, *, left: bool, retry_after: str | None = None):
        super().__init__(problem)
        self.endpoint, self.problem, self.left, self.retry_after = endpoint, problem, left, retry_after


@dataclass(frozen=True)
class EncodedImage:
    """An image prepared for the server: resized to the budget, encoded once as a PNG data URL."""

    image: Image.Image
    data_url: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * 3 + len(self.data_url)


@dataclass
class Endpoint:
    url: str
    client: object  # httpx.Client
    outstanding: int = 0
    failures: int = 0  # in a row
    down_until: float = 0.0
    last_error: str = ""
    answered: int = 0
    failing: set = field(default_factory=set)  # requests that failed here since the last success
    probing: bool = False


class EndpointPool:
    """Endpoints in rotation, picked by fewest outstanding requests (round-robin
    among ties); thread-safe."""

    def __init__(self, endpoints: list[Endpoint], *, cooldown_s: float, dead_after: int, clock=time.monotonic):
        self.endpoints = endpoints
        self.cooldown_s = cooldown_s
        self.dead_after = dead_after
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0

    def live(self) -> list[Endpoint]:
        now = self.clock()
        return [e for e in self.endpoints if e.down_until <= now]

    def acquire(self) -> Endpoint:
        with self._lock:
            now = self.clock()
            n = len(self.endpoints)
            best = None
            for k in range(n):
                e = self.endpoints[(self._next + k) % n]
                if e.down_until <= now and (best is None or e.outstanding < best.outstanding):
                    best = e
            if best is None:
                raise EndpointsDown("no endpoint is up: " + "; ".join(
                    f"{e.url} ({e.last_error}, retried in {max(0.0, e.down_until - now):.0f} s)" for e in self.endpoints))
            self._next = (self.endpoints.index(best) + 1) % n
            best.outstanding += 1
            return best

    def release(self, endpoint: Endpoint, outcome: str, error: str = "", request_key=None) -> bool:
        """``outcome``: ok, neutral (the endpoint works but refused this one),
        failed (counts towards leaving the rotation when ``dead_after``
        *different* requests fail in a row: one sick request never takes a
        server down) or down (leave it now). True when the endpoint left."""
        with self._lock:
            endpoint.outstanding -= 1
            if outcome == "ok":
                endpoint.failures = 0
                endpoint.failing.clear()
                endpoint.answered += 1
            elif outcome in ("failed", "down"):
                endpoint.last_error = error
                endpoint.failing.add(request_key if request_key is not None else object())
                endpoint.failures = len(endpoint.failing)
                if outcome == "down" or endpoint.failures >= self.dead_after:
                    self._take_down(endpoint, error)
                    return True
            return False

    def _take_down(self, endpoint: Endpoint, error: str) -> None:
        if endpoint.down_until <= self.clock():
            log.warning("endpoint %s leaves the rotation until it answers again: %s", endpoint.url, error)
        endpoint.down_until = self.clock() + self.cooldown_s
        endpoint.failures = 0
        endpoint.failing.clear()

    def mark_down(self, endpoint: Endpoint, error: str) -> None:
        """Out of the rotation without a word (the caller has said why)."""
        with self._lock:
            endpoint.last_error = error
            endpoint.down_until = self.clock() + self.cooldown_s
            endpoint.failures = 0
            endpoint.failing.clear()

    def mark_up(self, endpoint: Endpoint) -> None:
        with self._lock:
            if endpoint.down_until > self.clock():
                log.warning("endpoint %s answers again: back in the rotation", endpoint.url)
            endpoint.down_until = 0.0


def png_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_image(image: Image.Image, generation: Generation) -> EncodedImage:
    """An image as an OpenAI-compatible server is sent it: resized to the judge's
    pixel budget (``pixels.resize_for_model``) and PNG-encoded as a data URL."""
    resized = resize_for_model(image, generation)
    return EncodedImage(resized, png_data_url(resized))


def _data_url(image, generation: Generation) -> str:
    if isinstance(image, EncodedImage):
        return image.data_url
    return encode_image(image, generation).data_url


def constraint_fields(kind: str, generation: Generation, *, structured_field: str = "vllm",
                      chars_per_token: float = CHARS_PER_TOKEN) -> dict:
    """What a constrained request adds to its chat body: the grammar of its kind
    (``structured_outputs``, vLLM) or the JSON schema (``response_format``)."""
    if structured_field == "vllm":
        # The grammar itself: vLLM ignores a request's disable_any_whitespace (only its
        # server-wide --structured-outputs-config counts), and free whitespace can
        # fill max_new_tokens; the grammar is the transformers path's, exactly.
        return {"structured_outputs": {"grammar": grammar_for(kind, generation.max_new_tokens, chars_per_token)}}
    schema = schema_for(kind, generation.max_new_tokens, chars_per_token)
    return {"response_format": {"type": "json_schema", "json_schema": {
        "name": f"spatialreward_{kind}", "schema": schema, "strict": True}}}


def chat_payload(request: Request, generation: Generation, *, served_model: str, constrained: bool,
                 structured_field: str = "vllm", chars_per_token: float = CHARS_PER_TOKEN) -> dict:
    """The chat-completion body of one request: its images (``EncodedImage`` as
    they are, PIL images encoded here) then its text, the explicit decoding and
    the request's own seed; the constraint of its kind when ``constrained``."""
    content = [{"type": "image_url", "image_url": {"url": _data_url(image, generation)}}
               for image in request.images]
    content.append({"type": "text", "text": request.prompt})
    body = {
        "model": served_model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": generation.max_new_tokens,
        "temperature": generation.temperature if generation.sampling else 0,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "seed": request.seed,
        "n": 1,
        "stream": False,
        # Region markers and <think> stay in the text, as the transformers path keeps them.
        "skip_special_tokens": False,
    }
    if constrained:
        body.update(constraint_fields(request.kind, generation, structured_field=structured_field,
                                      chars_per_token=chars_per_token))
    return body


def normalize_url(url: str) -> str:
    """``http://h:8000`` and ``http://h:8000/v1/`` -> ``http://h:8000/v1``."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url {url!r}: expected http(s)://HOST:PORT/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def _first_line(text: str, limit: int = 200) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:limit] if lines else ""


def _error_text(response) -> str:
    """The server's error message from a non-200 response."""
    try:
        body = response.json()
    except ValueError:
        return _first_line(response.text, 300)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return _first_line(error.get("message") or json.dumps(error), 300)
        if isinstance(error, str):
            return _first_line(error, 300)
        if "message" in body:
            return _first_line(body["message"], 300)
    return _first_line(response.text, 300)


class OpenAIBackend:
    """SC and PQ requests as chat completions to one or more OpenAI-compatible servers."""

    max_batch = 1  # one request per generate(): the judge keeps `concurrency` of them in flight
    dtype = "server"

    def __init__(self, urls: Sequence[str], *, served_model: str, api_key: str | None = None,
                 concurrency: int = DEFAULT_CONCURRENCY, request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 structured_field: str = "vllm", retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 cooldown_s: float = 30.0, dead_after: int = 3, max_model_len: int | None = None):
        import httpx

        if structured_field not in STRUCTURED_FIELDS:
            raise ConfigError(f"structured_field must be one of {', '.join(STRUCTURED_FIELDS)}, not {structured_field!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"--concurrency must be an integer >= 1, not {concurrency!r}")
        if not request_timeout or request_timeout <= 0:
            raise ConfigError(f"--request-timeout must be a number of seconds > 0, not {request_timeout!r}")
        self.served_model = served_model
        self.model_id = served_model
        self.fingerprint = f"openai:{served_model}"
        self.chars_per_token = CHARS_PER_TOKEN  # load() measures the model's tokenizer when it is here
        self.concurrency = concurrency
        self.request_timeout = float(request_timeout)
        self.structured_field = structured_field
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_model_len = max_model_len
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(self.request_timeout, connect=min(10.0, self.request_timeout))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        endpoints = [Endpoint(url, httpx.Client(base_url=url, headers=headers, timeout=timeout, limits=limits))
                     for url in (normalize_url(u) for u in urls)]
        self.pool = EndpointPool(endpoints, cooldown_s=cooldown_s, dead_after=dead_after)
        self.capacity = concurrency  # requests the judge keeps in flight here
        self._headers = headers
        self._timeout = timeout
        self._limits = limits
        self._clients: dict = {}  # event loop -> {url: [_Shard of an httpx.AsyncClient]}
        self._ssl = None
        self._clients_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None, base_urls: Sequence[str] | str | None = None,
             api_key_env: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
             request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S, served_model: str | None = None,
             structured_field: str = "vllm", probe: bool = True, model_explicit: bool | None = None,
             **tuning) -> "OpenAIBackend":
        """Connect to the servers and check they can judge as configured (see
        the module docstring); ``tuning``: retries, backoff_s, max_backoff_s,
        cooldown_s, dead_after. ``model_explicit``: the caller asked for ``model``
        (the CLI: ``--model`` given), so a server that does not serve it is an
        error, never a fallback; default: explicit unless it is the default id."""
        generation = generation or Generation()
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        if not base_urls:
            raise ConfigError("--backend openai needs the server: --base-url http://HOST:PORT/v1 (repeat it for several)")
        if revision:
            raise ConfigError("--revision does not apply to --backend openai: the server decides which weights it serves")
        for flag, value in (("--device", device), ("--dtype", dtype)):
            if value not in (None, "", "auto"):
                raise ConfigError(f"{flag} does not apply to --backend openai: the server decides it")
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise EngineError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set "
                                  "(export it with the server's API key)")
        urls = list(dict.fromkeys(normalize_url(u) for u in base_urls))
        listed, unreachable = {}, {}
        for url in urls:
            try:
                listed[url] = _list_models(url, api_key)
            except EngineError as exc:
                if len(urls) == 1:
                    raise
                unreachable[url] = exc
        if not listed:  # none answers: the first one's line
            raise next(iter(unreachable.values()))
        for url, exc in unreachable.items():  # the run starts on those that answer; these are probed
            log.warning("%s (the run starts without it and takes it in when it answers)", exc)
        if model_explicit is None:
            model_explicit = model != DEFAULT_MODEL
        served = _choose_model(model, served_model, listed, explicit=model_explicit)
        lengths = {models[served] for models in listed.values() if models.get(served)}
        max_len = min(lengths) if lengths else None
        if max_len is not None:
            _check_context(urls, served, max_len, generation)
        backend = cls(urls, served_model=served, api_key=api_key, concurrency=concurrency,
                      request_timeout=request_timeout, structured_field=structured_field, max_model_len=max_len,
                      **tuning)
        backend.chars_per_token = local_chars_per_token(model, revision)  # the grammar's bounds, as in process
        for endpoint in backend.pool.endpoints:
            if endpoint.url in unreachable:
                backend.pool.mark_down(endpoint, "did not answer at start")
        if probe:
            try:
                for endpoint in backend.pool.endpoints:
                    if endpoint.url not in unreachable:
                        backend._probe(endpoint, generation)
            except BaseException:
                backend.close()
                raise
        return backend

    def _probe(self, endpoint: Endpoint, generation: Generation) -> None:
        """Two images per prompt accepted, and images inside the budget left as
        they are: two tiny ones, then two at the budget's maximum."""
        small = smart_resize(1, 1, min_pixels=generation.min_pixels, max_pixels=generation.max_pixels)
        side = math.isqrt(generation.max_pixels)
        large = smart_resize(side, side, min_pixels=generation.min_pixels, max_pixels=generation.max_pixels)
        used = []
        for h, w in (small, large):
            image = Image.new("RGB", (w, h), (128, 128, 128))
            content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for _ in range(2)]
            content.append({"type": "text", "text": "Describe the two images."})
            body = {"model": self.served_model, "messages": [{"role": "user", "content": content}],
                    "max_tokens": 1, "temperature": 0}
            url = endpoint.url
            try:
                response = endpoint.client.post("/chat/completions", json=body, timeout=max(STARTUP_TIMEOUT_S, self.request_timeout))
            except Exception as exc:  # noqa: BLE001 - any transport failure: one line
                raise EngineError(f"cannot reach the server at {url} ({describe(exc)}): start it, or fix --base-url") from None
            if response.status_code != 200:
                raise _probe_error(url, response, generation)
            try:
                used.append(int(response.json()["usage"]["prompt_tokens"]))
            except (ValueError, KeyError, TypeError):
                log.warning("%s does not report usage.prompt_tokens: cannot check that it keeps the pixel budget", url)
                return
        expected = 2 * (image_tokens(large[1], large[0]) - image_tokens(small[1], small[0]))
        if used[1] - used[0] != expected:
            budget = json.dumps({"size": {"shortest_edge": generation.min_pixels, "longest_edge": generation.max_pixels}})
            raise EngineError(
                f"{url}: the server's image processor resizes images that are already inside the pixel budget "
                f"(two {large[1]}x{large[0]} images cost {used[1] - used[0]} prompt tokens more than two "
                f"{small[1]}x{small[0]} ones; the budget gives {expected}), so the model would not see the images "
                f"as judged: restart it with the budget, e.g. vLLM: --mm-processor-kwargs '{budget}'")

    # -- requests -----------------------------------------------------------------
    def prepare_image(self, image: Image.Image, generation: Generation) -> EncodedImage:
        """The image as sent: resized to the budget and PNG-encoded, once (the judge's prepare stage)."""
        return encode_image(image, generation)

    def payload(self, request: Request, generation: Generation, *, constrained: bool) -> dict:
        """The chat-completion body of one request (``chat_payload``, with this server's settings)."""
        return chat_payload(request, generation, served_model=self.served_model, constrained=constrained,
                            structured_field=self.structured_field, chars_per_token=self.chars_per_token)

    async def agenerate(self, request: Request, generation: Generation, *, constrained: bool) -> Answer:
        """One request, asynchronously: its answer, or raise."""
        return await self.asend(self.payload(request, generation, constrained=constrained))

    async def asend(self, body: dict) -> Answer:
        """One chat body (``payload``/``chat_payload``), asynchronously: its answer, or raise."""
        now = self.pool.clock()
        for endpoint in self.pool.endpoints:  # out of the rotation (e.g. down at start): probed until it answers
            if endpoint.down_until > now and not endpoint.probing:
                self._start_probe(endpoint)
        data = await self.apost(body, key=object())  # this request, whatever its retries
        return _answer(data)

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        """The synchronous door (library callers, tests): the requests at once, at most
        ``concurrency`` in flight, on a private event loop."""
        async def run() -> list[Answer]:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(request: Request) -> Answer:
                async with gate:
                    return await self.agenerate(request, generation, constrained=constrained)

            try:
                return list(await asyncio.gather(*(one(r) for r in requests)))
            finally:
                await self._close_clients(asyncio.get_running_loop())

        return asyncio.run(run())

    def _client(self, endpoint: Endpoint):
        """The least busy of the endpoint's clients on the running loop. An
        endpoint's connections are split over clients of ``CONNECTIONS_PER_CLIENT``:
        httpx's pool does work in the number of connections for every request
        (measured here: ~25 ms of CPU per request at 128 connections in one pool, ~3.5 ms in pools of 4)."""
        import httpx

        loop = asyncio.get_running_loop()
        per = min(self.concurrency, CONNECTIONS_PER_CLIENT)
        with self._clients_lock:
            clients = self._clients.setdefault(loop, {}).setdefault(endpoint.url, [])
            shard = min(clients, key=lambda shard: shard.busy, default=None)
            if shard is None or (shard.busy >= per and len(clients) * per < self.concurrency):
                # One more client only when those there are full.
                limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
                if self._ssl is None:  # one TLS context for all clients (each costs ~20 ms to make)
                    import ssl

                    self._ssl = ssl.create_default_context()
                shard = _Shard(httpx.AsyncClient(base_url=endpoint.url, headers=self._headers, verify=self._ssl,
                                                 timeout=self._timeout, limits=limits))
                clients.append(shard)
            return shard

    async def apost(self, body: dict, *, key=None) -> dict:
        """The JSON answer to ``body``; retried on connection errors, 429 and 5xx
        with exponential backoff (tenacity); raises EngineRequestError or EndpointsDown."""
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        retrying = AsyncRetrying(stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                                 retry=retry_if_exception_type(_Retry), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(body, key)
        except _Retry as exc:
            attempts = self.retries + 1
            raise EngineRequestError(f"{exc.endpoint.url}: {exc.problem}; gave up after {attempts} attempts") from None
        raise AssertionError("unreachable")

    def _wait(self, state) -> float:
        """Backoff before the next attempt: exponential with jitter, at least the
        server's Retry-After, none when the endpoint left and another is live."""
        exc = state.outcome.exception()
        attempt = state.attempt_number
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
        if isinstance(exc, _Retry):
            if exc.retry_after is not None:
                try:
                    delay = min(self.max_backoff_s, max(delay, float(exc.retry_after)))
                except ValueError:
                    pass
            if exc.left and self.pool.live():
                delay = 0.0  # it left the rotation: go straight to another endpoint
        return delay

    async def _attempt(self, body: dict, key) -> dict:
        import httpx

        endpoint = self.pool.acquire()
        outcome = "neutral"
        try:
            async with self._client(endpoint) as client:
                response = await client.post("/chat/completions", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            outcome, problem = "down", f"cannot connect ({describe(exc)})"
        except httpx.TimeoutException:
            self.pool.release(endpoint, "neutral")
            raise EngineRequestError(f"{endpoint.url}: no answer within {self.request_timeout:g} s "
                                     "(raise --request-timeout)") from None
        except httpx.TransportError as exc:  # the connection broke: the server may have died mid-request
            outcome, problem = "failed", f"connection lost ({describe(exc)})"
        except BaseException:  # cancelled: the caller went away
            self.pool.release(endpoint, "neutral")
            raise
        else:
            status = response.status_code
            if status == 200:
                try:
                    data = response.json()
                except ValueError:
                    self.pool.release(endpoint, "failed", "answer is not JSON", key)
                    raise EngineRequestError(f"{endpoint.url}: the answer is not JSON") from None
                self.pool.release(endpoint, "ok")
                return data
            problem = f"HTTP {status}: {_error_text(response)}"
            if status == 429:
                self.pool.release(endpoint, "neutral")
                raise _Retry(endpoint, problem, left=False, retry_after=response.headers.get("retry-after"))
            if status < 500:
                self.pool.release(endpoint, "neutral")
                raise EngineRequestError(f"{endpoint.url} refused the request ({problem})")
            outcome = "failed"
        left = self.pool.release(endpoint, outcome, problem, key)
        if left:
            self._start_probe(endpoint)
        raise _Retry(endpoint, problem, left=left)

    def _start_probe(self, endpoint: Endpoint) -> None:
        """Probe an endpoint that left the rotation until it answers (on the running loop)."""
        with self.pool._lock:
            if endpoint.probing:
                return
            endpoint.probing = True
        asyncio.get_running_loop().create_task(self._probe_until_up(endpoint))

    async def _probe_until_up(self, endpoint: Endpoint) -> None:
        delay = 0.5
        try:
            while endpoint.down_until > self.pool.clock():
                await asyncio.sleep(min(delay, max(0.05, endpoint.down_until - self.pool.clock())))
                delay = min(max(delay * 2, 0.5), max(self.pool.cooldown_s, 0.5))
                try:
                    async with self._client(endpoint) as client:
                        response = await client.get("/models", timeout=min(5.0, self.request_timeout))
                except Exception:  # noqa: BLE001 - still down
                    continue
                if response.status_code == 200:
                    self.pool.mark_up(endpoint)
                    return
        finally:
            endpoint.probing = False

    async def _close_clients(self, loop) -> None:
        with self._clients_lock:
            clients = self._clients.pop(loop, {})
        for shards in clients.values():
            for shard in shards:
                await shard.client.aclose()

    async def aclose(self) -> None:
        """Close the clients of the running loop (the judge's)."""
        await self._close_clients(asyncio.get_running_loop())

    def close(self) -> None:
        for endpoint in self.pool.endpoints:
            endpoint.client.close()


class _Shard:
    """One httpx.AsyncClient of an endpoint, with the requests it carries now."""

    def __init__(self, client):
        self.client = client
        self.busy = 0

    async def __aenter__(self):
        self.busy += 1
        return self.client

    async def __aexit__(self, *exc):
        self.busy -= 1


def _answer(data: dict) -> Answer:
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        tokens = int((data.get("usage") or {}).get("completion_tokens") or len(choice.get("token_ids") or []))
        return Answer(text=text, tokens=tokens, finished=choice.get("finish_reason") == "stop")
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise EngineRequestError(f"malformed chat completion ({describe(exc)})") from None


def _list_models(url: str, api_key: str | None) -> dict[str, int | None]:
    """{model id: max model length or None} that ``url`` serves."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url + "/models", headers=headers, timeout=STARTUP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any transport failure: one line
        raise EngineError(f"cannot reach the server at {url} ({describe(exc)}): start it, or fix --base-url") from None
    if response.status_code in (401, 403):
        hint = "check the key in the variable --api-key-env names" if api_key else \
            "pass --api-key-env VAR naming the environment variable that holds its key"
        raise EngineError(f"{url} refused the request (HTTP {response.status_code}, missing or wrong API key): {hint}")
    try:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        entries = response.json()["data"]
        return {str(e["id"]): (int(e["max_model_len"]) if e.get("max_model_len") else None) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{url}/models did not answer as an OpenAI-compatible server ({describe(exc)}): "
                          "fix --base-url (it usually ends with /v1)") from None


def _choose_model(model: str, served_model: str | None, listed: dict[str, dict], *, explicit: bool) -> str:
    """The model id to request: --served-model, else --model when served, else
    the only model served (only when --model was not given: a protocol run on
    another model than the one asked for is not that protocol)."""
    def names(url: str) -> str:
        return ", ".join(sorted(listed[url])) or "nothing"

    first = next(iter(listed))
    if served_model:
        wanted, flag = served_model, "--served-model"
    elif model in listed[first]:
        wanted, flag = model, "--model"
    elif not explicit and len(listed[first]) == 1:
        wanted, flag = next(iter(listed[first])), None
        log.warning("judging with %s, the one model %s serves (no --model given)", wanted, first)
    else:
        raise EngineError(f"{first} does not serve model {model!r} (it serves: {names(first)}): "
                          "pass --served-model NAME (or --model NAME)")
    for url, models in listed.items():
        if wanted not in models:
            how = f"fix {flag}" if flag else "pass --served-model NAME"
            raise EngineError(f"{url} does not serve model {wanted!r} (it serves: {names(url)}): {how}")
    return wanted


def _check_context(urls: list[str], served: str, max_len: int, generation: Generation) -> None:
    needed, per_image = context_needed(generation)
    if max_len < needed:
        raise EngineError(
            f"{urls[0]} serves {served} with a max model length of {max_len} tokens, but an SC request needs up to "
            f"{needed} (two images of up to {per_image} tokens at --max-pixels {generation.max_pixels}, about "
            f"{PROMPT_TOKENS} prompt tokens, --max-new-tokens {generation.max_new_tokens}): restart the server with "
            f"--max-model-len {needed} or more, or lower --max-pixels / --max-new-tokens")


def _probe_error(url: str, response, generation: Generation) -> EngineError:
    import re

    text = _error_text(response)
    found = re.search(r"at most (\d+) image", text, re.IGNORECASE)
    if found or ("limit" in text.lower() and "image" in text.lower() and "prompt" in text.lower()):
        takes = f"at most {found.group(1)} image(s)" if found else "fewer images"
        return EngineError(f"{url} takes {takes} per prompt, but SC requests send 2: restart the server with "
                           "--limit-mm-per-prompt '{\"image\": 2}' (vLLM)")
    if re.search(r"context length|max_model_len|maximum model length|too long", text, re.IGNORECASE):
        needed, _ = context_needed(generation)
        return EngineError(f"{url}: the server's max model length is too small for the pixel budget ({text}): "
                           f"restart it with --max-model-len {needed} or more, or lower --max-pixels / --max-new-tokens")
    if response.status_code == 404:
        return EngineError(f"{url}: the chat endpoint answered HTTP 404 ({text}): fix --base-url or --served-model")
    return EngineError(f"{url}: a start-up probe request failed (HTTP {response.status_code}: {text})")
