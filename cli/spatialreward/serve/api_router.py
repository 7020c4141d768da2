"""The reward server's routes: thin, over ``RewardService``. JSON only; no pickle anywhere.

An outer ASGI guard checks, before any route runs: the bearer token (when one
is set; constant-time compare) and the body size (413; a POST must say its
Content-Length, else 411). Unknown fields and bad types are 422 (``protocol``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .protocol import RewardRequest
from .serving import Overloaded, RewardService, TooManyItems

OPEN_PATHS = ("/health", "/ping")  # liveness answers without a token
ROUTES = ("/v1/rewards", "/health", "/ping", "/ready", "/v1/info", "/metrics", "/")


def build_app(service: RewardService, *, token: str | None = None):
    """The ASGI application: FastAPI routes inside the token and body-size guard."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has stopped accepting and finished the requests in flight.
        service.draining = True
        service.judge.close()

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
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/rewards")
    async def rewards(body: RewardRequest):
        started = time.perf_counter()
        try:
            results = await service.score(body)
        except Overloaded as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})
        except TooManyItems as exc:
            return JSONResponse({"detail": str(exc)}, status_code=413)
        service.metrics.request_latency.observe(time.perf_counter() - started)
        return {"results": results}

    @app.post("/")
    async def released_proxy_route(request: Request):
        """The released client posts pickles here; a pickle runs code on this host, so it is refused."""
        return JSONResponse({"detail": "pickled requests are not accepted (unpickling runs the sender's code on "
                             "this host); use spatialreward.client.RewardClient, which sends JSON to /v1/rewards "
                             "with the same evaluate() call"}, status_code=415)

    return Guard(app, token=token, max_body=service.limits.max_body_bytes, metrics=service.metrics)


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
