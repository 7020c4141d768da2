"""``spatialreward serve``: the reward server for online RL (JSON over HTTP)."""

from __future__ import annotations

import gc
import ipaddress
import os
import sys
from pathlib import Path

import click

from ..config import load_config
from ..constants import DEFAULT_SERVE_PORT
from ..errors import SpatialRewardError
from .options import (
    config_overrides,
    judge_options,
    load_judge,
    pass_params,
    quiet_option,
)

TOKEN_ENV = "SPATIALREWARD_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {token_file}: {exc.strerror}", param_hint="--token-file") from None
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs a token (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_SERVE_PORT, show_default=True,
              help="Port to listen on (the released reward server's; the client finds it there by default).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help=f"File holding the bearer token clients must send (or set {TOKEN_ENV}).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option("--max-body-mb", type=click.IntRange(min=1), default=None,
              help="Largest request body, MiB (413 above) [default 384: 64 edits as 1024x1024 PNGs].")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="Items per request (413 above) [default 256].")
@click.option("--max-queue", type=click.IntRange(min=1), default=None,
              help="Items admitted and unfinished, all clients together (503 + Retry-After above) [default 1024].")
@click.option("--max-image-mb", type=click.IntRange(min=1), default=None,
              help="Largest image file, MiB (the item fails above) [default 32].")
@click.option("--max-pixels-in-flight-mp", type=click.IntRange(min=1), default=None,
              help="Megapixels of images (read from their headers) admitted and unfinished, all clients together: "
                   "a request that does not fit gets 503 + Retry-After before any decoding; one larger than "
                   "this alone, 413 [default 512].")
@judge_options
@quiet_option
@pass_params
def serve(params: dict) -> None:
    """Serve rewards over HTTP for online RL: POST /v1/rewards (JSON, base64 images).

    Items of all clients share one queue in front of the model, each request
    served in turn; admission by items and by image pixels. A client that
    disconnects cancels its work (kept for a retry when it sent an
    Idempotency-Key). SIGTERM or Ctrl-C: stop accepting, finish the requests in
    flight, exit 0.

    \b
    spatialreward serve                  # http://127.0.0.1:23456, the released server's address
    spatialreward serve --host 0.0.0.0 --token-file token.txt
    """
    try:
        import uvicorn

        from ..serve.api_router import build_app
        from ..serve.serving import MIB, MP, Limits, RewardService
    except ImportError as exc:
        raise SpatialRewardError(f"spatialreward serve needs FastAPI and uvicorn ({exc.name} is missing): "
                                 'pip install "spatialreward[serve]"') from None

    token = read_token(params["token_file"])
    if not is_loopback(params["host"]) and token is None and not params["insecure"]:
        raise click.UsageError(f"--host {params['host']} is reachable from other machines: give --token-file "
                               f"(or set {TOKEN_ENV}), or --insecure to serve without a token")
    defaults = Limits()
    limits = Limits(
        max_items=params["max_items"] or defaults.max_items,
        max_queue=params["max_queue"] or max(defaults.max_queue, params["max_items"] or 0),
        max_image_bytes=(params["max_image_mb"] or defaults.max_image_bytes // MIB) * MIB,
        max_body_bytes=(params["max_body_mb"] or defaults.max_body_bytes // MIB) * MIB,
        max_pixels_in_flight=(params["max_pixels_in_flight_mp"] or defaults.max_pixels_in_flight // MP) * MP,
    )
    try:
        limits.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config = load_config(params["config_file"], config_overrides(params))
    judge = load_judge(params, config)
    service = RewardService(judge, limits, backend=params["backend"])
    app = build_app(service, token=token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.draining = True  # /ready says so at once; uvicorn finishes what is in flight
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal after its graceful shutdown (the
            # process then dies of it); a drained shutdown is a success: exit 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    server = Server(uvicorn.Config(app, host=params["host"], port=params["port"], log_level="warning",
                                   access_log=False, lifespan="on"))
    if not params["quiet"]:
        auth = "token required" if token else "no token"
        click.echo(f"serving rewards on http://{params['host']}:{params['port']} ({auth}); "
                   "POST /v1/rewards, GET /health /ready /v1/info /metrics", err=True)
    # The event loop shares the GIL with the threads that parse, decode and prepare images: a short
    # switch interval lets it in within ~1 ms (not 5), and what was loaded so far (the model, the
    # libraries) is moved out of the garbage collector's reach, so that no full collection walks it
    # while requests wait. Both keep /health and small requests fast while large bodies are decoded.
    sys.setswitchinterval(0.001)
    # Decoded images are large, short-lived blocks: glibc would keep them in per-thread arenas
    # after they are freed (measured: RSS 1.57 GiB at a 1.29 GiB admission bound, 1.38 GiB
    # with nothing in flight). Blocks from 1 MiB up are mapped and returned on free instead.
    _return_large_blocks()
    gc.collect()
    gc.freeze()
    server.run()
    if not server.started:
        raise SpatialRewardError(f"could not listen on {params['host']}:{params['port']}")


def _return_large_blocks(threshold: int = 1 << 20) -> None:
    """glibc only: ``mallopt(M_MMAP_THRESHOLD, threshold)``; elsewhere nothing."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
