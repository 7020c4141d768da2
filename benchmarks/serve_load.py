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

``--scenario acceptance`` (or one of ``memory``, ``health``, ``fairness``) runs
the server's acceptance checks instead, against one ``spatialreward serve``
process it starts on 127.0.0.1 (scripted echo backend, ``--delay-s`` per
``generate()`` call, default 0.05 s), and prints PASS/FAIL for each:

- memory: 16 clients send requests whose items carry 24-megapixel PNGs while
  the server's RSS is sampled every 0.1 s (and its kernel high-water mark read
  at the end); the peak must stay under a bound derived from the admission
  budget (``--max-pixels-in-flight-mp`` x 4 bytes: Pillow holds RGB as 32 bits
  a pixel; plus the prepare pool's and the engine's transient copies, the
  request bodies the server may hold, and the idle RSS). Requests refused
  with 503 are retried by ``RewardClient`` (Retry-After) and counted from the
  server's ``/metrics``.
- health: ``/health`` latency (a separate process, fixed spacing) while ~50 MB
  requests (many distinct noisy PNGs, base64) are received and decoded; p99 < 50 ms.
- fairness: a 1-item request's latency alone, then while two 256-item
  requests are in flight; the ratio of the medians <= 3.

    python benchmarks/serve_load.py --scenario acceptance   # ~1-3 min on 2 cores; exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import binascii
import http.client
import io
import json
import math
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024
MP = 1_000_000


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


def start_server(script: Path, batch_size: int, max_queue: int, max_items: int,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).parent / "spatialreward"
    proc = subprocess.Popen([str(exe), "serve", "--backend", "scripted", "--model", str(script), "--port", str(port),
                             "--batch-size", str(batch_size), "--max-queue", str(max_queue),
                             "--max-items", str(max_items), "--quiet", *extra], stdout=subprocess.DEVNULL)
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


def run_load(args) -> None:
    """The throughput mode (``--scenario load``): as described at the top."""
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


# -- the acceptance scenarios: memory, /health under a large body, fairness ------------------

# What the bound on the server's RSS counts (see scenario_memory).
PIL_RGB_BYTES = 4  # Pillow keeps an RGB picture as 32 bits a pixel (RGBX): 24 MP decoded is 91.6 MiB, not 68.7
PREPARE_EXTRA_COPIES = 1  # load_image: beside the decoded picture, exif_transpose's copy of it, per prepare worker
ENGINE_COPIES = 2  # scripted echo backend: Image.tobytes() of one image at a time (its pieces, then the joined bytes)


def server_workers() -> tuple[int, int]:
    """(prepare pool threads, request parse/decode threads) of a server started on this machine."""
    try:
        from spatialreward.serve.serving import REQUEST_WORKERS
    except ImportError:  # pragma: no cover - the serve extra missing: the default
        REQUEST_WORKERS = 2
    return max(2, min(8, os.cpu_count() or 2)), REQUEST_WORKERS  # judge.py: the prepare pool's size


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the kernel's high-water mark of RSS) of ``pid``, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return {key: int(value.split()[0]) * 1024 for key, value in
                    (line.split(":", 1) for line in status if line.startswith(("VmRSS:", "VmHWM:")))}
    except OSError:  # not Linux: psutil's RSS, no high-water mark
        import psutil

        return {"VmRSS": psutil.Process(pid).memory_info().rss}


def png_variant(png: bytes, tag: str) -> bytes:
    """The same picture with a tEXt chunk after IHDR: other bytes, so the server decodes it
    as another image (it shares the work of byte-identical images among the items in flight)."""
    data = b"k\0" + tag.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", binascii.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]  # 33: the signature (8) and the IHDR chunk (25)


def large_png(width: int, height: int, seed: int) -> bytes:
    """A photo-sized PNG that compresses like one: smooth gradients and 8x8 blocks of noise
    (6000x4000: ~1.7 MB of file, 72 MB decoded)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy = (np.arange(height, dtype=np.uint32)[:, None] * 160 // height).astype(np.uint8)
    xx = (np.arange(width, dtype=np.uint32)[None, :] * 90 // width).astype(np.uint8)
    picture = np.empty((height, width, 3), np.uint8)
    picture[..., 0] = yy + xx
    picture[..., 1] = 200 - yy + xx // 2
    picture[..., 2] = 60 + xx + seed
    noise = rng.integers(0, 32, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    picture += np.repeat(np.repeat(noise, 8, 0), 8, 1)[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def noisy_png(side: int, seed: int) -> bytes:
    """Uniform noise: a PNG that does not compress (side x side x 3 bytes and a little more)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def server_metrics(url: str, token: str | None) -> dict[tuple, float]:
    """The server's /metrics as {(name, sorted labels): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def rewards_by_code(metrics: dict, code: int) -> float:
    return metrics.get(("spatialreward_requests_total", (("code", str(code)), ("route", "/v1/rewards"))), 0.0)


def gauge(metrics: dict, name: str) -> float:
    return metrics.get((f"spatialreward_{name}", ()), 0.0)


def judged(metrics: dict) -> float:
    """Items judged so far (ok or error)."""
    return sum(value for (name, _), value in metrics.items() if name == "spatialreward_items_total")


def mib(value: float) -> float:
    return round(value / MIB, 1)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def scenario_memory(url: str, proc: subprocess.Popen, args) -> dict:
    """16 clients, requests of 1-2 items with 24 MP PNGs (a source shared by the request's
    items, distinct edited images); the server's RSS every 0.1 s against the bound."""
    from spatialreward.client import RewardClient

    width, height = args.mem_width, args.mem_height
    started = time.perf_counter()
    source_png, edited_png = large_png(width, height, 1), large_png(width, height, 2)
    made_s = time.perf_counter() - started
    image_bytes = width * height * PIL_RGB_BYTES  # decoded, as Pillow holds it
    raw_rgb = width * height * 3  # the same picture as packed RGB bytes (Image.tobytes)
    time.sleep(0.5)
    idle = proc_memory(proc.pid)["VmRSS"]
    before = server_metrics(url, args.token)

    samples: list[int] = []
    admitted: list[float] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            samples.append(proc_memory(proc.pid)["VmRSS"])
            stop.wait(0.1)

    def sample_admission() -> None:
        while not stop.wait(0.25):
            try:
                admitted.append(gauge(server_metrics(url, args.token), "admitted_pixels"))
            except Exception:  # noqa: BLE001 - a missed sample
                pass

    latencies: list[float] = []
    failures = {"requests": 0, "items": 0, "items_ok": 0}
    lock = threading.Lock()

    def client(c: int) -> None:
        # Retry-After is 1 s: enough tries for a client to wait its turn for minutes.
        with RewardClient(url, token=args.token, max_retries=300, backoff_s=0.05, timeout=300) as reward_client:
            for r in range(args.mem_requests):
                source = png_variant(source_png, f"source {c}.{r}")
                items = [{"source": source, "edited": png_variant(edited_png, f"edited {c}.{r}.{i}"),
                          "instruction": f"client {c} request {r} item {i}"} for i in range(1 + (c + r) % 2)]
                t0 = time.perf_counter()
                try:
                    results = reward_client.score(items)
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    print(f"  memory: client {c} request {r} failed: {exc}", file=sys.stderr)
                    with lock:
                        failures["requests"] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    failures["items"] += sum(not x.ok for x in results)
                    failures["items_ok"] += sum(x.ok for x in results)

    threads = [threading.Thread(target=sample_rss, daemon=True), threading.Thread(target=sample_admission, daemon=True)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.mem_clients) as pool:
        list(pool.map(client, range(args.mem_clients)))
    wall = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    after = server_metrics(url, args.token)
    memory = proc_memory(proc.pid)
    peak_sampled = max(samples)
    peak = max(peak_sampled, memory.get("VmHWM", 0))

    prepare_workers, request_workers = server_workers()
    budget = args.max_pixels_mp * MP * PIL_RGB_BYTES
    prepare = prepare_workers * PREPARE_EXTRA_COPIES * image_bytes
    engine = ENGINE_COPIES * raw_rgb
    # The largest body (2 items: a source and two edited images, base64) and how many the server may hold:
    # one per client (as bytes, then base64 text, then image files: about one body each), and a second
    # copy in each parse/decode worker (joining the chunks; the text beside the body; the files beside the text).
    largest_body = 4 * math.ceil((len(source_png) + 2 * len(edited_png) + 200) / 3) + 1000
    bodies = (args.mem_clients + request_workers) * largest_body
    bound = idle + budget + prepare + engine + bodies
    answered_503 = rewards_by_code(after, 503) - rewards_by_code(before, 503)
    answered_200 = rewards_by_code(after, 200) - rewards_by_code(before, 200)
    requests = args.mem_clients * args.mem_requests
    figures = {
        "memory_clients": args.mem_clients, "memory_requests": requests,
        "memory_items": sum(1 + (c + r) % 2 for c in range(args.mem_clients) for r in range(args.mem_requests)),
        "memory_image": f"{width}x{height} PNG, {len(source_png) / 1e6:.2f} / {len(edited_png) / 1e6:.2f} MB "
                        f"(made in {made_s:.1f} s), {image_bytes / MIB:.1f} MiB decoded (Pillow RGB)",
        "memory_max_pixels_in_flight_mp": args.max_pixels_mp,
        "memory_wall_s": round(wall, 1),
        "memory_latency_p50_s": round(percentile(latencies, 0.5), 2),
        "memory_latency_max_s": round(max(latencies, default=float("nan")), 2),
        "memory_failed_requests": failures["requests"], "memory_failed_items": failures["items"],
        "memory_ok_items": failures["items_ok"],
        "memory_posts_200": int(answered_200), "memory_posts_503_retried": int(answered_503),
        "memory_admitted_mp_peak_sampled": round(max(admitted, default=0) / MP, 1),
        "memory_rss_idle_mib": mib(idle), "memory_rss_peak_sampled_mib": mib(peak_sampled),
        "memory_rss_hwm_mib": mib(memory["VmHWM"]) if "VmHWM" in memory else None,
        "memory_rss_end_mib": mib(memory["VmRSS"]), "memory_rss_samples": len(samples),
        "memory_bound_mib": mib(bound),
        "memory_bound_terms_mib": {
            "idle": mib(idle),
            f"pixels {args.max_pixels_mp} MP x {PIL_RGB_BYTES} B": mib(budget),
            f"prepare pool {prepare_workers} x {PREPARE_EXTRA_COPIES} x {image_bytes / MIB:.1f}": mib(prepare),
            f"engine (scripted echo) {ENGINE_COPIES} x {raw_rgb / MIB:.1f}": mib(engine),
            f"bodies ({args.mem_clients} clients + {request_workers} workers) x {largest_body / MIB:.1f} MiB":
                mib(bodies),
        },
        "memory_pass": peak <= bound and not failures["requests"] and not failures["items"],
    }
    print(f"memory: {args.mem_clients} clients x {args.mem_requests} requests of 1-2 items, {figures['memory_image']}; "
          f"--max-pixels-in-flight-mp {args.max_pixels_mp}")
    print(f"  {len(latencies)}/{requests} requests answered in {wall:.1f} s (latency p50 "
          f"{figures['memory_latency_p50_s']} s, max {figures['memory_latency_max_s']} s); items ok "
          f"{failures['items_ok']}, failed {failures['items']}; failed requests {failures['requests']}")
    print(f"  POST /v1/rewards answered 200: {int(answered_200)}, 503 (retried by RewardClient after Retry-After): "
          f"{int(answered_503)}; admitted pixels, peak sampled: {figures['memory_admitted_mp_peak_sampled']} MP")
    print(f"  server RSS: idle {mib(idle)} MiB, peak sampled every 0.1 s {mib(peak_sampled)} MiB ({len(samples)} "
          f"samples), kernel high-water mark {figures['memory_rss_hwm_mib']} MiB; at the end, nothing in flight: "
          f"{mib(memory['VmRSS'])} MiB")
    print("  bound = " + " + ".join(f"{name} {value}" for name, value in figures["memory_bound_terms_mib"].items())
          + f" = {mib(bound)} MiB")
    print(f"  peak RSS {mib(peak)} MiB <= bound {mib(bound)} MiB: {verdict(peak <= bound)}"
          + ("" if not (failures["requests"] or failures["items"]) else "  (but some requests or items FAILED)"))
    return figures


def _ping_health(url: str, count: int, interval: float, start_at: float, pipe) -> None:
    """In its own process: ``count`` GET /health on one connection, one every ``interval`` s from ``start_at``
    (on schedule: a stalled answer delays the next ones, it does not drop them); sends [(sent, seconds, status)]."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    for _ in range(5):  # warm: the connection, the route
        connection.request("GET", "/health")
        connection.getresponse().read()
    pings = []
    for k in range(count):
        wait = start_at + k * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent = time.monotonic()
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        pings.append((sent, time.monotonic() - sent, response.status))
    connection.close()
    pipe.send(pings)


def scenario_health(url: str, args) -> dict:
    """/health latency, from a separate process, while ~50 MB requests are received and decoded."""
    side = args.health_image_size
    noisy = noisy_png(side, 3)
    encoded = 4 * math.ceil(len(noisy) / 3)
    items = max(1, math.ceil(args.health_mb * 1e6 / (2 * encoded)))

    def body(n: int) -> bytes:
        import base64

        return json.dumps({"items": [
            {"source": base64.b64encode(png_variant(noisy, f"source {n}.{i}")).decode(),
             "edited": base64.b64encode(png_variant(noisy, f"edited {n}.{i}")).decode(),
             "instruction": f"large request {n} item {i}"} for i in range(items)]}).encode()

    bodies = [body(n) for n in range(args.health_requests)]  # built before the clock starts
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    interval = args.health_interval_ms / 1000
    start_at = time.monotonic() + 2.0  # the pinger's process is up and warm by then
    pinger = context.Process(target=_ping_health, args=(url, args.health_pings, interval, start_at, sender))
    pinger.start()
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    window_end = start_at + args.health_pings * interval
    large = []  # (sent, uploaded, answered, status)
    time.sleep(max(0.0, start_at + 0.1 - time.monotonic()))
    for payload in bodies:  # back to back while the pings go on
        if time.monotonic() > window_end - 0.2:
            break
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        sent = time.monotonic()
        connection.request("POST", "/v1/rewards", body=payload, headers=headers)
        uploaded = time.monotonic()
        response = connection.getresponse()
        answer = response.read()
        large.append((sent, uploaded, time.monotonic(), response.status))
        if response.status != 200:
            print(f"  health: large request answered {response.status}: {answer[:300]!r}", file=sys.stderr)
        connection.close()
    pings = receiver.recv()
    pinger.join(30)
    during = [seconds for at, seconds, _ in pings
              if any(at < answered and at + seconds > sent for sent, _, answered, _ in large)]
    every = [seconds for _, seconds, _ in pings]
    p99 = percentile(during, 0.99)
    figures = {
        "health_body_mb": round(len(bodies[0]) / 1e6, 1), "health_items": items,
        "health_image": f"{side}x{side} noise PNG, {len(noisy) / 1e6:.2f} MB, every image distinct",
        "health_large_requests": len(large), "health_large_status": [status for *_, status in large],
        "health_large_upload_s": [round(up - sent, 2) for sent, up, _, _ in large],
        "health_large_total_s": [round(done - sent, 2) for sent, _, done, _ in large],
        "health_pings": len(pings), "health_pings_during_large": len(during),
        "health_bad_status": sum(status != 200 for *_, status in pings),
        "health_p50_ms": round(percentile(during, 0.5) * 1000, 1), "health_p99_ms": round(p99 * 1000, 1),
        "health_max_ms": round(max(during, default=float("nan")) * 1000, 1),
        "health_all_p50_ms": round(percentile(every, 0.5) * 1000, 1),
        "health_all_p99_ms": round(percentile(every, 0.99) * 1000, 1),
        "health_pass": bool(during) and p99 < 0.050 and all(s == 200 for *_, s in large),
    }
    print(f"health: {args.health_pings} GET /health every {args.health_interval_ms} ms from another process, while "
          f"{len(large)} requests of {figures['health_body_mb']} MB ({items} items, {figures['health_image']}) "
          f"were sent back to back over http.client")
    print(f"  large requests: status {figures['health_large_status']}, upload s {figures['health_large_upload_s']}, "
          f"answered after s {figures['health_large_total_s']}")
    print(f"  /health during a large request ({len(during)} of {len(pings)} pings): p50 {figures['health_p50_ms']} ms, "
          f"p99 {figures['health_p99_ms']} ms, max {figures['health_max_ms']} ms; all pings: p50 "
          f"{figures['health_all_p50_ms']} ms, p99 {figures['health_all_p99_ms']} ms")
    print(f"  /health p99 {figures['health_p99_ms']} ms (target < 50 ms): {verdict(figures['health_pass'])}")
    return figures


def scenario_fairness(url: str, args) -> dict:
    """A 1-item request's latency alone, then while two 256-item requests are in flight."""
    from spatialreward.client import RewardClient

    images = make_images(65, args.fair_image_size)
    source, pool = images[0], images[1:]
    counter = iter(range(1_000_000))

    def small(client: RewardClient) -> tuple[float, float]:
        n = next(counter)
        item = {"source": png_variant(source, f"small {n}"), "edited": png_variant(pool[n % len(pool)], f"small {n}"),
                "instruction": f"small request {n}"}
        t0 = time.perf_counter()
        result = client.score([item])[0]
        if not result.ok:
            raise RuntimeError(f"the small request failed: {result.error}")
        return t0, time.perf_counter() - t0

    big_spans: list[tuple[float, float]] = []

    def big(b: int) -> None:
        items = [{"source": source, "edited": pool[(b * 7 + i) % len(pool)], "instruction": f"big {b} item {i}"}
                 for i in range(args.fair_items)]
        with RewardClient(url, token=args.token, chunk_size=args.fair_items, max_retries=5, timeout=300) as client:
            t0 = time.perf_counter()
            results = client.score(items)
            big_spans.append((t0, time.perf_counter()))
        bad = sum(not r.ok for r in results)
        if bad:
            print(f"  fairness: {bad} items of large request {b} failed", file=sys.stderr)

    with RewardClient(url, token=args.token, max_retries=5, timeout=300) as client:
        for _ in range(2):
            small(client)  # warm
        alone = [small(client)[1] for _ in range(args.fair_small)]
        judged_before = judged(server_metrics(url, args.token))
        threads = [threading.Thread(target=big, args=(b,)) for b in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both large requests admitted: their items pending or judged
            metrics = server_metrics(url, args.token)
            if gauge(metrics, "pending_items") + judged(metrics) - judged_before >= 2 * args.fair_items:
                break
            time.sleep(0.05)
        loaded = [small(client) for _ in range(args.fair_small)]
        for thread in threads:
            thread.join()
    ends = [end for _, end in big_spans]
    under = [seconds for t0, seconds in loaded if len(ends) == 2 and t0 + seconds < min(ends)]
    ratio = percentile(under, 0.5) / percentile(alone, 0.5) if under else float("nan")
    worst = max(under, default=float("nan")) / percentile(alone, 0.5)
    figures = {
        "fairness_alone_ms": [round(x * 1000, 1) for x in alone],
        "fairness_under_load_ms": [round(x * 1000, 1) for x in under],
        "fairness_large_s": [round(end - t0, 2) for t0, end in big_spans],
        "fairness_ratio": round(ratio, 2), "fairness_worst_ratio": round(worst, 2),
        "fairness_pass": len(under) >= max(1, args.fair_small // 2) and ratio <= 3,
    }
    print(f"fairness: 1-item requests ({args.fair_image_size}x{args.fair_image_size} PNGs), {args.fair_small} alone, "
          f"then {args.fair_small} while two {args.fair_items}-item requests are in flight (--batch-size "
          f"{args.batch_size}, {args.delay_s} s per generate call)")
    print(f"  alone ms {figures['fairness_alone_ms']} (p50 {percentile(alone, 0.5) * 1000:.1f}); under load ms "
          f"{figures['fairness_under_load_ms']} ({len(under)} of {len(loaded)} finished before the large ones, "
          f"which took s {figures['fairness_large_s']})")
    print(f"  ratio {figures['fairness_ratio']} (p50 under load / p50 alone; worst {figures['fairness_worst_ratio']}) "
          f"(target <= 3): {verdict(figures['fairness_pass'])}")
    return figures


def run_acceptance(args) -> int:
    """The scenarios chosen, against one server started here; 1 when a target is missed."""
    if args.url:
        raise SystemExit("--scenario memory/health/fairness/acceptance start their own server (the RSS is read "
                         "from its process): leave out --url")
    chosen = ["memory", "health", "fairness"] if args.scenario == "acceptance" else [args.scenario]
    script = json.loads(Path(args.script).read_text()) if args.script else {"echo": True}
    script["record"] = False
    script["delay_s"] = args.delay_s
    script_file = Path(tempfile.mkdtemp(prefix="serve-load-")) / "script.json"
    script_file.write_text(json.dumps(script))
    started = time.perf_counter()
    print(f"serve_load --scenario {args.scenario}: {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; server: --backend scripted (echo, delay_s "
          f"{args.delay_s}) --batch-size {args.batch_size} --max-pixels-in-flight-mp {args.max_pixels_mp}"
          + "".join(f"; {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "PILLOW_"))))
    proc, url = start_server(script_file, args.batch_size, max_queue=max(1024, 2 * args.fair_items + 16),
                             max_items=max(256, args.fair_items),
                             extra=("--max-pixels-in-flight-mp", str(args.max_pixels_mp)))
    figures: dict = {"scenario": args.scenario, "cpus": os.cpu_count(), "delay_s": args.delay_s,
                     "batch_size": args.batch_size}
    try:
        from spatialreward.client import RewardClient

        warm = make_images(2, 64)
        with RewardClient(url, token=args.token) as client:  # imports and first decodes, before the idle RSS
            client.score([{"source": warm[0], "edited": warm[1], "instruction": f"warm {k}"} for k in range(4)])
        for name in chosen:
            t0 = time.perf_counter()
            if name == "memory":
                figures.update(scenario_memory(url, proc, args))
            elif name == "health":
                figures.update(scenario_health(url, args))
            else:
                figures.update(scenario_fairness(url, args))
            figures[f"{name}_scenario_s"] = round(time.perf_counter() - t0, 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    figures["server_exit"] = proc.returncode
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    passed = all(figures[f"{name}_pass"] for name in chosen)
    print(f"server exit {proc.returncode}; {figures['wall_s']} s in all; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; " + ", ".join(
              f"{name} {verdict(figures[f'{name}_pass'])}" for name in chosen))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if passed else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("load", "memory", "health", "fairness", "acceptance"), default="load",
                        help="load: throughput and latency (the default); memory, health, fairness: one acceptance "
                             "check; acceptance: the three, against one server")
    parser.add_argument("--url", help="load this running server instead of starting one (--scenario load)")
    parser.add_argument("--token", default=os.environ.get("SPATIALREWARD_SERVE_TOKEN"))
    parser.add_argument("--script", help="scripted backend script (default: echo answers)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests in all (fixed count)")
    parser.add_argument("--items", type=int, default=16, help="items per request")
    parser.add_argument("--delay-s", type=float, default=None,
                        help="scripted backend: seconds per generate call (default 0; 0.05 for the acceptance "
                             "scenarios)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="side of the (random, PNG) test images")
    parser.add_argument("--no-judge", action="store_true", help="skip the in-process judge comparison")
    parser.add_argument("--json", help="also write the figures to this file")
    group = parser.add_argument_group("acceptance scenarios")
    group.add_argument("--max-pixels-mp", type=int, default=200, help="the server's --max-pixels-in-flight-mp")
    group.add_argument("--mem-clients", type=int, default=16)
    group.add_argument("--mem-requests", type=int, default=2, help="requests per client (1 or 2 items each)")
    group.add_argument("--mem-width", type=int, default=6000)
    group.add_argument("--mem-height", type=int, default=4000)
    group.add_argument("--health-mb", type=float, default=50, help="size of each large request body")
    group.add_argument("--health-requests", type=int, default=3, help="large requests at most, sent back to back")
    group.add_argument("--health-image-size", type=int, default=640, help="side of its noise PNGs")
    group.add_argument("--health-pings", type=int, default=100)
    group.add_argument("--health-interval-ms", type=float, default=20)
    group.add_argument("--fair-items", type=int, default=256, help="items of each of the two large requests")
    group.add_argument("--fair-small", type=int, default=5, help="1-item requests timed alone, then under load")
    group.add_argument("--fair-image-size", type=int, default=128)
    args = parser.parse_args()
    if args.scenario == "load":
        args.delay_s = args.delay_s or 0.0
        run_load(args)
    else:
        args.delay_s = 0.05 if args.delay_s is None else args.delay_s
        sys.exit(run_acceptance(args))


if __name__ == "__main__":
    main()
