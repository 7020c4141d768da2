"""A real `spatialreward serve` process on a free loopback port, for the server tests."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from conftest import spatialreward_exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], *, env: dict | None = None, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([spatialreward_exe(), "serve", "--port", str(self.port), *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not up after {timeout}s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start(tmp: Path, script: dict | None = None, *args, env: dict | None = None, model_args=None) -> ServerProcess:
    if model_args is None:
        path = tmp / "script.json"
        path.write_text(json.dumps(script or {"echo": True}))
        model_args = ["--backend", "scripted", "--model", str(path)]
    return ServerProcess([*model_args, "--quiet", *args], env=env, log=tmp / "server.log").wait_ready()


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def item_image(k: int, size: int = 16):
    """A small image whose pixels are a function of k (distinct for distinct k)."""
    from PIL import Image

    image = Image.new("RGB", (size, size), ((k * 37) % 256, (k // 7) % 256, (k * 11 + 3) % 256))
    image.putpixel((k % size, (k // size) % size), (255 - (k % 256), k % 13, 200))
    return image


def expected_echo(k: int, edited) -> dict:
    """The reward the echo backend gives the instruction "item k" on ``edited``."""
    from spatialreward.aggregate import Scores, aggregate
    from spatialreward.config import Aggregation
    from spatialreward.images import load_image
    from spatialreward.testing.scripted import echo_pq

    naturalness = echo_pq(load_image(edited))
    reward = aggregate(Scores(k % 26, 20, naturalness, 20), Aggregation())
    return {"success": k % 26, "naturalness": naturalness, "reward": round(reward.reward, 6)}
