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

Load balancing and failures: each endpoint has its own connection pool; a
request goes to the live endpoint with the fewest requests in flight. Connection
errors, 429 and 5xx are retried with exponential backoff (bounded); an endpoint
that cannot be connected to, or fails ``dead_after`` times in a row, leaves the
rotation for ``cooldown_s`` and is then tried again. When no endpoint is live,
or the retries run out, or the server refuses the request (4xx) or does not
answer within ``request_timeout``, ``generate`` raises: the judge records a
``model``-stage error, never a score. The backend is thread-safe: the judge
runs up to ``concurrency`` ``generate`` calls at once, one request each.

Identity: ``fingerprint`` is ``openai:<served model id>`` and ``dtype`` is
``server``. The judge hash therefore names the backend kind and the served
model, so results of this backend and of the in-process transformers (or vLLM)
backend never resume into each other, even for the same weights: engines differ
in kernels and numerics, and silently mixing two engines' judgments in one
results file is worse than judging again.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
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
STARTUP_TIMEOUT_S = 30.0  # /models and the probes at load: a live server answers them in well under that


class EndpointsDown(RuntimeError):
    """No endpoint is in the rotation."""


class EngineRequestError(RuntimeError):
    """A request failed for good (refused, timed out, or retries exhausted)."""


@dataclass
class Endpoint:
    url: str
    client: object  # httpx.Client
    outstanding: int = 0
    failures: int = 0  # in a row
    down_until: float = 0.0
    last_error: str = ""
    answered: int = 0


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

    def release(self, endpoint: Endpoint, outcome: str, error: str = "") -> None:
        """``outcome``: ok, neutral (the endpoint works but refused this one),
        failed (counts towards leaving the rotation) or down (leave it now)."""
        with self._lock:
            endpoint.outstanding -= 1
            if outcome == "ok":
                endpoint.failures = 0
                endpoint.answered += 1
            elif outcome in ("failed", "down"):
                endpoint.failures += 1
                endpoint.last_error = error
                if outcome == "down" or endpoint.failures >= self.dead_after:
                    if endpoint.down_until <= self.clock():
                        log.warning("endpoint %s leaves the rotation for %.0f s: %s", endpoint.url, self.cooldown_s, error)
                    endpoint.down_until = self.clock() + self.cooldown_s
                    endpoint.failures = 0


def png_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
        self._executor = None
        self._executor_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None, base_urls: Sequence[str] | str | None = None,
             api_key_env: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
             request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S, served_model: str | None = None,
             structured_field: str = "vllm", probe: bool = True, **tuning) -> "OpenAIBackend":
        """Connect to the servers and check they can judge as configured (see
        the module docstring); ``tuning``: retries, backoff_s, max_backoff_s,
        cooldown_s, dead_after."""
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
        listed = {url: _list_models(url, api_key) for url in urls}
        served = _choose_model(model, served_model, listed)
        lengths = {listed[url][served] for url in urls if listed[url].get(served)}
        max_len = min(lengths) if lengths else None
        if max_len is not None:
            _check_context(urls, served, max_len, generation)
        backend = cls(urls, served_model=served, api_key=api_key, concurrency=concurrency,
                      request_timeout=request_timeout, structured_field=structured_field, max_model_len=max_len,
                      **tuning)
        backend.chars_per_token = local_chars_per_token(model, revision)  # the grammar's bounds, as in process
        if probe:
            try:
                for endpoint in backend.pool.endpoints:
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
    def payload(self, request: Request, generation: Generation, *, constrained: bool) -> dict:
        """The chat-completion body of one request."""
        content = [{"type": "image_url", "image_url": {"url": png_data_url(resize_for_model(image, generation))}}
                   for image in request.images]
        content.append({"type": "text", "text": request.prompt})
        body = {
            "model": self.served_model,
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
            if self.structured_field == "vllm":
                # The grammar itself: vLLM ignores a request's disable_any_whitespace (only its
                # server-wide --structured-outputs-config counts), and free whitespace can
                # fill max_new_tokens; the grammar is the transformers path's, exactly.
                body["structured_outputs"] = {
                    "grammar": grammar_for(request.kind, generation.max_new_tokens, self.chars_per_token)}
            else:
                schema = schema_for(request.kind, generation.max_new_tokens, self.chars_per_token)
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": f"spatialreward_{request.kind}", "schema": schema, "strict": True}}
        return body

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        if len(requests) <= 1:
            return [self.complete(self.payload(r, generation, constrained=constrained)) for r in requests]
        with self._executor_lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="spatialreward-openai")
        futures = [self._executor.submit(lambda r=r: self.complete(self.payload(r, generation, constrained=constrained)))
                   for r in requests]
        return [f.result() for f in futures]

    def complete(self, body: dict) -> Answer:
        """POST one chat completion with retries; its answer, or raise."""
        data = self.post(body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            tokens = int((data.get("usage") or {}).get("completion_tokens") or len(choice.get("token_ids") or []))
            return Answer(text=text, tokens=tokens, finished=choice.get("finish_reason") == "stop")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise EngineRequestError(f"malformed chat completion ({describe(exc)})") from None

    def post(self, body: dict) -> dict:
        """The JSON answer to ``body``; retried on connection errors, 429 and
        5xx with exponential backoff; raises EngineRequestError or EndpointsDown."""
        import httpx

        attempt = 0
        while True:
            endpoint = self.pool.acquire()
            outcome, retry_after = "neutral", None
            try:
                response = endpoint.client.post("/chat/completions", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                outcome, problem = "down", f"cannot connect ({describe(exc)})"
            except httpx.TimeoutException:
                self.pool.release(endpoint, "neutral")
                raise EngineRequestError(f"{endpoint.url}: no answer within {self.request_timeout:g} s "
                                         "(raise --request-timeout)") from None
            except httpx.TransportError as exc:  # the connection broke: the server may have died mid-request
                outcome, problem = "failed", f"connection lost ({describe(exc)})"
            except BaseException:
                self.pool.release(endpoint, "neutral")
                raise
            else:
                status = response.status_code
                if status == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        self.pool.release(endpoint, "failed", "answer is not JSON")
                        raise EngineRequestError(f"{endpoint.url}: the answer is not JSON") from None
                    self.pool.release(endpoint, "ok")
                    return data
                problem = f"HTTP {status}: {_error_text(response)}"
                if status == 429:
                    retry_after = response.headers.get("retry-after")
                elif status >= 500:
                    outcome = "failed"
                else:
                    self.pool.release(endpoint, "neutral")
                    raise EngineRequestError(f"{endpoint.url} refused the request ({problem})")
            self.pool.release(endpoint, outcome, problem)
            attempt += 1
            if attempt > self.retries:
                raise EngineRequestError(f"{endpoint.url}: {problem}; gave up after {attempt} attempts")
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
            if retry_after is not None:
                try:
                    delay = min(self.max_backoff_s, max(delay, float(retry_after)))
                except ValueError:
                    pass
            live = self.pool.live()
            if outcome in ("down", "failed") and live and endpoint not in live:
                delay = 0.0  # it left the rotation: go straight to another endpoint
            if delay:
                time.sleep(delay)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        for endpoint in self.pool.endpoints:
            endpoint.client.close()


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


def _choose_model(model: str, served_model: str | None, listed: dict[str, dict]) -> str:
    """The model id to request: --served-model, else --model when served, else
    the only model served (when --model is left at its default)."""
    def names(url: str) -> str:
        return ", ".join(sorted(listed[url])) or "nothing"

    first = next(iter(listed))
    if served_model:
        wanted, flag = served_model, "--served-model"
    elif model in listed[first]:
        wanted, flag = model, "--model"
    elif model == DEFAULT_MODEL and len(listed[first]) == 1:
        wanted, flag = next(iter(listed[first])), None
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
