"""The reward server's routes: thin, over ``RewardService``. JSON only; no pickle anywhere.

An outer ASGI guard checks, before any route runs: the bearer token (when one
is set; constant-time compare) and the body size (413; a POST must say its
Content-Length, else 411). Unknown fields and bad types are 422 (``protocol``).

``POST /v1/rewards`` reads the raw body and hands it to the service, which
parses and decodes it off the event loop and judges it on this loop (no
thread bridge); while it waits, the route watches for the client going away.
``POST /compute`` is Flow-Factory's remote reward protocol, translated into the
same request and path (``compute``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .compute import compute as compute_answer
from .protocol import IDEMPOTENCY_HEADER
from .serving import ClientGone, InvalidRequest, Overloaded, RewardService, TooLarge

# The status logged for a request whose client went away before its answer (nobody reads it).
CLIENT_CLOSED = 499

OPEN_PATHS = ("/health", "/ping")  # liveness answers without a token
ROUTES = ("/v1/rewards", "/compute", "/health", "/ping", "/ready", "/v1/info", "/metrics", "/")


def build_app(service: RewardService, *, token: str | None = None):
    """The ASGI application: FastAPI routes inside the token and body-size guard."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has stopped accepting and finished the requests in flight.
        service.draining = True
        await service.aclose()

    app = FastAPI(title="spatialreward reward server", version=service.info()["version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ping")
    async def ping():
        """The released reward server's health check."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        ok, reason = service.ready()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    @app.get("/v1/info")
    async def info():
        return service.info()

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/rewards")
    async def rewards(request: Request):
        started = time.perf_counter()

        async def answer(chunks):
            return await service.rewards(chunks, key=request.headers.get(IDEMPOTENCY_HEADER),
                                         disconnected=request.is_disconnected)

        response = await _answered(request, answer)
        if response.status_code == 200:
            service.metrics.request_latency.observe(time.perf_counter() - started)
        return response

    @app.post("/compute")
    async def compute(request: Request):
        """Flow-Factory's remote reward protocol (``RemoteRewardClient``): a JSON
        body of ``prompt``, ``image`` (base64 PNGs), ``condition_images`` (per
        sample a list of base64 PNGs), ``video``/``condition_videos`` (null) and
        ``kwargs`` (ignored), pointwise (a batch) or groupwise (one group), the
        same shape; answered ``{"rewards": [...], "failed": [...], "on_error": ...}``
        in request order, judged on the ``/v1/rewards`` path (``serve.compute``).

        Default ``on_error`` here is ``neutral``, not ``none``: Flow-Factory turns
        ``rewards`` straight into ``torch.tensor``, so a failed item gets the mean
        reward of its group (same prompt and condition images; ``"group_by":
        "request"`` makes the whole request one group): zero advantage. Under
        ``raise`` (or ``neutral`` with every item failed) the answer is a 200 with
        an ``error`` key, which Flow-Factory's client raises on. A malformed body
        is a 422 whose detail names the field."""
        return await _answered(request, lambda chunks: compute_answer(service, chunks,
                                                                     disconnected=request.is_disconnected))

    @app.post("/")
    async def released_proxy_route(request: Request):
        """The released client posts pickles here; a pickle runs code on this host, so it is refused."""
        return JSONResponse({"detail": "pickled requests are not accepted (unpickling runs the sender's code on "
                             "this host); use spatialreward.client.RewardClient, which sends JSON to /v1/rewards "
                             "with the same evaluate() call"}, status_code=415)

    return Guard(app, token=token, max_body=service.limits.max_body_bytes, metrics=service.metrics)


async def _answered(request: Request, answer) -> Response:
    """Read the body (joined and parsed off the loop by ``answer``), and map the
    service's refusals to their status codes: 422, 503 with Retry-After, 413, 499."""
    try:
        chunks = [chunk async for chunk in request.stream()]
        return json_answer(await answer(chunks))
    except InvalidRequest as exc:
        return JSONResponse({"detail": exc.detail}, status_code=422)
    except Overloaded as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})
    except TooLarge as exc:
        return JSONResponse({"detail": str(exc)}, status_code=413)
    except (ClientGone, ClientDisconnect):
        return Response(status_code=CLIENT_CLOSED)


def json_answer(body: dict, status_code: int = 200) -> Response:
    """A JSON response; ``on_error="nan"`` lists carry NaN as the JSON extension
    ``NaN`` (what Python's json, and so requests and httpx, read as float nan)."""
    try:
        return JSONResponse(body, status_code=status_code)
    except ValueError:  # NaN: JSONResponse refuses it
        return Response(json.dumps(body, allow_nan=True, ensure_ascii=False, separators=(",", ":")),
                        status_code=status_code, media_type="application/json")


class Guard:
    """Token and body-size checks in front of the app, and request counting."""

    def __init__(self, app, *, token: str | None, max_body: int, metrics):
        self.app = app
        self.token = f"Bearer {token}".encode() if token else None
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = {}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self.metrics.requests.inc(route=route, code=message["status"])
            await send(message)

        headers = dict(scope["headers"])
        if self.token is not None and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                return await _answer(counted_send, 401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                                     {"www-authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None:
                return await _answer(counted_send, 411, "a request body must come with Content-Length")
            try:
                size = int(length)
            except ValueError:
                return await _answer(counted_send, 400, "bad Content-Length")
            if size > self.max_body:
                return await _answer(counted_send, 413, f"body of {size:,} bytes is over --max-body-mb "
                                     f"({self.max_body // (1024 * 1024)} MiB)")
        return await self.app(scope, receive, counted_send)


async def _answer(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
