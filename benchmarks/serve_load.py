"""Bounded load generator for `spatialreward serve`, with `judge`'s throughput on the same backend.

N client threads send a fixed number of POST /v1/rewards requests (ITEMS items
each) and report items/s, request latency p50/p95/p99, errors, and the server's
RSS at start and end. Then the same items go through `Judge.score_many` in
process (what `spatialreward judge` runs, minus the manifest and the output
file) on the same backend and settings, for the server / judge ratio.

By default it starts the server itself with the scripted backend (``--delay-s``
emulates a model's time per generate call) and stops it at the end; ``--url``
loads a server you started (then the judge comparison needs ``--script``).

    python benchmarks/serve_load.py --clients 8 --requests 200 --items 16 --delay-s 0.02 --batch-size 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    low, high = int(k), min(int(k) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (k - low)


def make_images(count: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1024 / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(script: Path, batch_size: int, max_queue: int, max_items: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).parent / "spatialreward"
    proc = subprocess.Popen([str(exe), "serve", "--backend", "scripted", "--model", str(script), "--port", str(port),
                             "--batch-size", str(batch_size), "--max-queue", str(max_queue),
                             "--max-items", str(max_items), "--quiet"], stdout=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not come up")


def load(url: str, clients: int, requests: int, items_per_request: int, images: list[bytes], token: str | None,
         pid: int | None = None):
    from spatialreward.client import RewardClient

    latencies: list[float] = []
    errors = {"requests": 0, "items": 0}
    lock = threading.Lock()
    counter = iter(range(requests))
    counter_lock = threading.Lock()
    source = images[0]
    trace: list[float] = []  # server RSS (MiB) after each tenth of the requests
    marks = {max(1, requests * t // 10) for t in range(1, 11)}

    def worker(_: int) -> None:
        with RewardClient(url, token=token, max_retries=5, backoff_s=0.05, chunk_size=items_per_request) as client:
            while True:
                with counter_lock:
                    r = next(counter, None)
                if r is None:
                    return
                items = [{"source": source, "edited": images[(r * items_per_request + i) % len(images)],
                          "instruction": f"item {r * items_per_request + i}"} for i in range(items_per_request)]
                started = time.perf_counter()
                try:
                    results = client.score(items)
                    bad = sum(not x.ok for x in results)
                except Exception:  # noqa: BLE001 - counted, reported
                    with lock:
                        errors["requests"] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)
                    errors["items"] += bad
                    if pid is not None and len(latencies) in marks:
                        trace.append(round(rss_mb(pid), 1))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    return wall, latencies, errors, trace


def judge_rate(script: dict, batch_size: int, count: int, images: list[bytes]) -> float:
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.sample import Sample
    from spatialreward.testing.scripted import ScriptedBackend

    judge = Judge(ScriptedBackend(dict(script)), load_config(None, {"batch_size": batch_size}))
    samples = (Sample(id=str(k), source=images[0], edited=images[k % len(images)], instruction=f"item {k}")
               for k in range(count))
    started = time.perf_counter()
    done = sum(1 for _ in judge.score_many(samples))
    wall = time.perf_counter() - started
    judge.close()
    return done / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="load this running server instead of starting one")
    parser.add_argument("--token", default=os.environ.get("SPATIALREWARD_SERVE_TOKEN"))
    parser.add_argument("--script", help="scripted backend script (default: echo answers)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests in all (fixed count)")
    parser.add_argument("--items", type=int, default=16, help="items per request")
    parser.add_argument("--delay-s", type=float, default=0.0, help="scripted backend: seconds per generate call")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="side of the (random, PNG) test images")
    parser.add_argument("--no-judge", action="store_true", help="skip the in-process judge comparison")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    script = json.loads(Path(args.script).read_text()) if args.script else {"echo": True}
    script.setdefault("record", False)  # the scripted backend keeps no requests: flat memory
    if args.delay_s:
        script["delay_s"] = args.delay_s
    images = make_images(64, args.image_size)
    proc = None
    if args.url:
        url = args.url
    else:
        script_file = Path(tempfile.mkdtemp(prefix="serve-load-")) / "script.json"
        script_file.write_text(json.dumps(script))
        proc, url = start_server(script_file, args.batch_size, max_queue=max(1024, args.clients * args.items * 2),
                                 max_items=max(256, args.items))
    rss_start = rss_mb(proc.pid) if proc else None
    load(url, args.clients, args.clients * 4, args.items, images, args.token)  # warm-up: every client, 4 requests
    rss_warm = rss_mb(proc.pid) if proc else None
    wall, latencies, errors, trace = load(url, args.clients, args.requests, args.items, images, args.token,
                                         pid=proc.pid if proc else None)
    rss_end = rss_mb(proc.pid) if proc else None
    if proc:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    items = len(latencies) * args.items
    figures = {
        "clients": args.clients, "requests": args.requests, "items_per_request": args.items,
        "delay_s": args.delay_s, "batch_size": args.batch_size, "image_size": args.image_size,
        "server_items_per_s": round(items / wall, 1), "wall_s": round(wall, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 4), "latency_p95_s": round(percentile(latencies, 0.95), 4),
        "latency_p99_s": round(percentile(latencies, 0.99), 4),
        "failed_requests": errors["requests"], "failed_items": errors["items"],
        "server_rss_mb_start": rss_start and round(rss_start, 1), "server_rss_mb_after_warmup": rss_warm and round(rss_warm, 1),
        "server_rss_mb_end": rss_end and round(rss_end, 1), "server_rss_mb_trace": trace,
        "server_exit": proc.returncode if proc else None,
    }
    if not args.no_judge and (proc or args.script):
        rate = judge_rate(script, args.batch_size, min(items, 4000), images)
        figures["judge_items_per_s"] = round(rate, 1)
        figures["server_vs_judge"] = round(figures["server_items_per_s"] / rate, 3)
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
