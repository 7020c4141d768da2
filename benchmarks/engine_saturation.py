"""Does the judge keep an engine's slots busy? Busy fraction and requests/s
against a local test engine with N slots, vs a bare async client.

    python benchmarks/engine_saturation.py            # N = 8, 32, 128, with and without a slow head: ~9 min on 2 cores
    python benchmarks/engine_saturation.py --quick    # median 0.5 s (slow head 10 s): ~5 min on 2 cores (the 6ae6ae7 core)
    python benchmarks/engine_saturation.py --slots 32 --heads yes --json figures.json

The test engine is an OpenAI-compatible chat server this script starts in a
child process on 127.0.0.1 (raw asyncio HTTP/1.1, cheap per request): N slots (requests
beyond N wait inside the engine, as in a real engine's queue), each answer
held for a log-normal time (median ``--median-s``, sigma ``--sigma``, seeded;
the k-th request to arrive gets the k-th draw), and in the "slow head" case the
first request of the run takes ``--head-factor`` x the median. It answers what
``--backend openai`` needs: ``GET /v1/models`` (with ``max_model_len``), the two
start-up probes (``max_tokens`` 1; ``usage.prompt_tokens`` counted from the
images' sizes as a vLLM server at the published pixel budget would; answered at
once, outside the slots), and chat completions with a valid SpatialReward answer
(SC: two images, PQ: one), ``finish_reason`` "stop" and ``usage``. It records
when each request arrived and each slot's busy intervals.

Per case (N slots, head or not):

1. judge: ``Judge.from_pretrained(backend="openai", backend_options={"base_urls":
   [url], "concurrency": N})`` then ``list(judge.score_many(samples))`` over
   ``N x --edits-per-slot`` edits (64x64 PNG files: the client's image work is
   small), 2 requests per edit. Only the public API, so it runs on any core.
2. bare: a fresh engine with the same N and the same answer-time sequence; a
   bare async client (N keep-alive connections, raw asyncio HTTP/1.1) replays
   the very request bodies the judge sent (recorded by the first engine), in the
   same order, with no ordering constraint between them: what the engine gives.

Both are measured on the engine's clock, from the first chat request's arrival
(start-up probes excluded) to the last answer: requests/s = requests / window,
busy fraction = busy slot-seconds / (N x window). "ideal busy" is the busy
fraction of a perfect client (all requests queued at once, taken in order by
the first free slot): below 1 because the last answers end unevenly, and far
below when the slow head outlasts the rest of the work (at the default 12 edits
per slot it is 0.96-0.99 in every case; at 6, 0.64-0.94).
Targets: judge busy >= 0.95 of the window and judge req/s >= 0.95 x bare.
"client ms/req": CPU time of this process (judge or bare client) per request;
"engine ms/req": the engine process's, over the run.
The engine runs in its own process; on a small shared machine the client, the
engine and other work compete for cores (load average printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import header, load_average

SERVED = "saturation-engine"
MAX_MODEL_LEN = 16384
SC_ANSWER = '{"edit_region": [], "reasoning": "ok", "score": [20, 18]}'
PQ_ANSWER = '{"reasoning": "ok", "score": [22, 21]}'
TARGET_BUSY = 0.95
TARGET_RATIO = 0.95


# -- the test engine (child process) ---------------------------------------------------
def durations(seed: int, median: float, sigma: float, head: float | None):
    """The k-th answer time, k = 0, 1, ...: log-normal, seeded; the first is ``head`` s when given."""
    rng = random.Random(seed)
    k = 0
    while True:
        d = median * math.exp(sigma * rng.gauss(0.0, 1.0))
        yield head if (k == 0 and head is not None) else d
        k += 1


def png_size(url: str) -> tuple[int, int]:
    """(width, height) of a PNG data URL, from its IHDR chunk (no decoding)."""
    import base64

    data = base64.b64decode(url.split(",", 1)[1][:64])
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


HTTP_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required"}


async def read_message(reader) -> tuple[bytes, dict, bytes] | None:
    """One HTTP/1.1 message (request or response) with a Content-Length body:
    (first line, headers with lower-case names, body); None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    body = await reader.readexactly(length) if length else b""
    return lines[0], headers, body


def write_response(writer, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (status, HTTP_REASONS.get(status, b"Error"), len(data)) + data)


def engine_main(args) -> None:
    """The test engine: a raw asyncio HTTP/1.1 server (keep-alive, Content-Length bodies), so
    that its own cost per request stays far below the client's."""
    [slots] = args.slots
    draws = durations(args.seed, args.median_s, args.sigma, args.head_s)
    state = {"arrivals": [], "intervals": [], "bodies": [], "cpu0": None}
    clock = time.perf_counter

    async def chat(raw: bytes, free: asyncio.Queue) -> tuple[int, dict]:
        arrived = clock()
        body = json.loads(raw)
        if body.get("model") != SERVED:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
        [message] = body["messages"]
        images = [p["image_url"]["url"] for p in message["content"] if p.get("type") == "image_url"]
        if body.get("max_tokens") == 1:  # a start-up probe: answered at once, outside the slots
            prompt = 20 + sum(2 + (w // 32) * (h // 32) for w, h in map(png_size, images))
            return 200, {"id": "probe", "object": "chat.completion", "model": SERVED,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "A"},
                                      "finish_reason": "length"}],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}}
        if state["cpu0"] is None:
            state["cpu0"] = time.process_time()
        hold = next(draws)
        state["arrivals"].append(arrived)
        if args.record:
            state["bodies"].append(raw)
        slot = await free.get()
        start = clock()
        await asyncio.sleep(hold)
        end = clock()
        free.put_nowait(slot)
        state["intervals"].append((slot, start, end))
        answer = SC_ANSWER if len(images) == 2 else PQ_ANSWER
        return 200, {"id": f"chatcmpl-{len(state['intervals'])}", "object": "chat.completion", "model": SERVED,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 300, "completion_tokens": 24, "total_tokens": 324}}

    def stats() -> dict:
        if args.record and state["bodies"]:
            with open(args.record, "wb") as f:
                for raw in state["bodies"]:
                    f.write(raw.replace(b"\n", b"") + b"\n")
        cpu = time.process_time() - state["cpu0"] if state["cpu0"] is not None else 0.0
        return {"arrivals": state["arrivals"], "intervals": state["intervals"], "cpu": cpu}

    async def serve() -> None:
        free: asyncio.Queue = asyncio.Queue()
        for s in range(slots):
            free.put_nowait(s)

        async def handle(reader, writer) -> None:
            try:
                while True:
                    message = await read_message(reader)
                    if message is None:
                        break
                    line, headers, raw = message
                    method, path = line.split(b" ")[:2]
                    path = path.split(b"?")[0].rstrip(b"/")
                    if method == b"POST" and b"content-length" not in headers:
                        write_response(writer, 411, {"error": {"message": "Content-Length required", "code": 411}})
                        break
                    if method == b"GET" and path == b"/v1/models":
                        write_response(writer, 200, {"object": "list", "data": [
                            {"id": SERVED, "object": "model", "max_model_len": MAX_MODEL_LEN}]})
                    elif method == b"GET" and path == b"/_stats":
                        write_response(writer, 200, stats())
                    elif method == b"POST" and path == b"/v1/chat/completions":
                        write_response(writer, *await chat(raw, free))
                    else:
                        write_response(writer, 404, {"detail": "Not Found"})
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(handle, sock=sock, backlog=4096, limit=1 << 20)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        parent = os.getppid()
        async with server:
            while os.getppid() == parent:  # the benchmark died without stopping this engine: stop
                await asyncio.sleep(1)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


class Engine:
    """The test engine in a child process."""

    def __init__(self, args, *, slots: int, head_s: float | None, record: Path | None = None):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", "--slots", str(slots),
               "--median-s", str(args.median_s), "--sigma", str(args.sigma), "--seed", str(args.seed)]
        if head_s is not None:
            cmd += ["--head-s", str(head_s)]
        if record is not None:
            cmd += ["--record", str(record)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise SystemExit(f"the test engine did not start (exit {self.proc.wait()})")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the test engine did not answer within 30 s")
            time.sleep(0.05)

    def stats(self, slots: int) -> dict:
        import httpx

        data = httpx.get(self.url.removesuffix("/v1") + "/_stats", timeout=120).json()
        arrivals, intervals = data["arrivals"], data["intervals"]
        if not intervals:
            return {"requests": 0, "window": float("nan"), "busy": float("nan"), "rate": float("nan"), "cpu": 0.0}
        first, last = min(arrivals), max(end for _, _, end in intervals)
        window = last - first
        busy = sum(end - start for _, start, end in intervals)
        return {"requests": len(intervals), "window": window, "busy": busy / (slots * window),
                "rate": len(intervals) / window, "cpu": data["cpu"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the two clients -------------------------------------------------------------------
def make_samples(folder: Path, edits: int, distinct: int = 16):
    """``edits`` Samples over ``distinct`` 64x64 edited PNGs and one source (files, decoded by the judge)."""
    import numpy as np
    from PIL import Image

    from spatialreward import Sample

    rng = np.random.default_rng(0)
    source = folder / "source.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    edited = []
    for i in range(distinct):
        path = folder / f"edited{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        edited.append(path)
    return [Sample(id=f"e{i}", source=str(source), edited=str(edited[i % distinct]),
                   instruction=f"Add a red square, edit {i}") for i in range(edits)]


def run_judge(url: str, slots: int, samples) -> dict:
    from spatialreward import Judge

    judge = Judge.from_pretrained(backend="openai", backend_options={"base_urls": [url], "concurrency": slots})
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        results = list(judge.score_many(samples))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        judge.close()
    errors = [r for r in results if not r.ok]
    if errors:
        print(f"    {len(errors)} error results; first: {errors[0].error}", flush=True)
    return {"results": len(results), "errors": len(errors), "cpu": cpu, "wall": wall}


async def _replay(url: str, slots: int, bodies: list[bytes]) -> int:
    """N keep-alive connections (raw asyncio HTTP/1.1, the cheapest client there is), each
    sending the next body as soon as its previous answer is in."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = (parts.path.rstrip("/") + "/chat/completions").encode()
    host = parts.netloc.encode()
    queue = iter(bodies)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
        try:
            for body in queue:
                writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (path, host, len(body)) + body)
                await writer.drain()
                line, _, answer = await read_message(reader)
                if line.split(b" ")[1] != b"200" or not json.loads(answer)["choices"]:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(slots)))
    return errors


def run_bare(url: str, slots: int, bodies: list[bytes]) -> dict:
    cpu = time.process_time()
    errors = asyncio.run(_replay(url, slots, bodies))
    return {"errors": errors, "cpu": time.process_time() - cpu}


def ideal_busy(args, slots: int, head_s: float | None, requests: int) -> float:
    """Busy fraction of a perfect client: all requests queued at t = 0, taken in order by the first free slot."""
    import heapq

    draws = durations(args.seed, args.median_s, args.sigma, head_s)
    free = [0.0] * slots
    total = end = 0.0
    for _ in range(requests):
        d = next(draws)
        t = heapq.heappop(free) + d
        heapq.heappush(free, t)
        total += d
        end = max(end, t)
    return total / (slots * end)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32, 128], help="engine slots per case (default 8 32 128)")
    parser.add_argument("--edits-per-slot", type=int, default=12,
                        help="edits per slot (2 requests each; default 12: ~24 x median of work per slot, so a "
                             "20x slow head can be hidden behind the rest, and a perfect client reaches busy >= 0.95)")
    parser.add_argument("--median-s", type=float, default=1.0, help="median answer time (default 1.0 s)")
    parser.add_argument("--sigma", type=float, default=0.3, help="log-normal sigma of the answer times (default 0.3)")
    parser.add_argument("--head-factor", type=float, default=20.0, help="slow head: first request's time / median (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", nargs="+", choices=["no", "yes"], default=["no", "yes"], help="cases: without / with the slow head")
    parser.add_argument("--quick", action="store_true", help="median 0.5 s (half the time; client overhead counts twice as much)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--head-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:
        return engine_main(args)
    if args.quick:
        args.median_s = 0.5

    header()
    print(f"answer times: log-normal, median {args.median_s:g} s, sigma {args.sigma:g}, seed {args.seed}; "
          f"slow head {args.head_factor:g} x median ({args.head_factor * args.median_s:g} s); "
          f"{args.edits_per_slot} edits per slot, 2 requests per edit")
    print(f"targets: busy >= {TARGET_BUSY}, judge / bare >= {TARGET_RATIO}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spatialreward-saturation-") as tmp:
        folder = Path(tmp)
        for slots in args.slots:
            samples = make_samples(folder, slots * args.edits_per_slot)
            for head in args.heads:
                head_s = args.head_factor * args.median_s if head == "yes" else None
                record = folder / "bodies.jsonl"
                record.unlink(missing_ok=True)
                engine = Engine(args, slots=slots, head_s=head_s, record=record)
                try:
                    judge = run_judge(engine.url, slots, samples)
                    js = engine.stats(slots)
                finally:
                    engine.stop()
                bodies = record.read_bytes().splitlines()
                engine = Engine(args, slots=slots, head_s=head_s)
                try:
                    bare = run_bare(engine.url, slots, bodies)
                    bs = engine.stats(slots)
                finally:
                    engine.stop()
                row = {
                    "slots": slots, "head": head, "requests": js["requests"], "judge_errors": judge["errors"],
                    "bare_errors": bare["errors"], "judge_busy": js["busy"], "bare_busy": bs["busy"],
                    "ideal_busy": ideal_busy(args, slots, head_s, js["requests"]),
                    "judge_rate": js["rate"], "bare_rate": bs["rate"], "ratio": js["rate"] / bs["rate"],
                    "judge_window_s": js["window"], "bare_window_s": bs["window"],
                    "judge_cpu_ms_per_req": 1000 * judge["cpu"] / max(1, js["requests"]),
                    "bare_cpu_ms_per_req": 1000 * bare["cpu"] / max(1, bs["requests"]),
                    "engine_cpu_ms_per_req": 1000 * js["cpu"] / max(1, js["requests"]),
                    "load_average": load_average(),
                }
                rows.append(row)
                print(f"  slots {slots:4d}  head {head:3s}: judge {row['judge_rate']:7.2f} req/s busy {row['judge_busy']:.3f} "
                      f"({row['judge_window_s']:.1f} s); bare {row['bare_rate']:7.2f} req/s busy {row['bare_busy']:.3f} "
                      f"({row['bare_window_s']:.1f} s); load {row['load_average']}", flush=True)

    print()
    print(f"| slots | head | requests | judge busy | bare busy | ideal busy | judge req/s | bare req/s | judge / bare "
          f"| client ms/req (judge, bare) | engine ms/req |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        mark_busy = "" if r["judge_busy"] >= TARGET_BUSY else " (!)"
        mark_ratio = "" if r["ratio"] >= TARGET_RATIO else " (!)"
        print(f"| {r['slots']} | {r['head']} | {r['requests']} | {r['judge_busy']:.3f}{mark_busy} | {r['bare_busy']:.3f} "
              f"| {r['ideal_busy']:.3f} | {r['judge_rate']:.2f} | {r['bare_rate']:.2f} | {r['ratio']:.2f}{mark_ratio} "
              f"| {r['judge_cpu_ms_per_req']:.1f}, {r['bare_cpu_ms_per_req']:.1f} | {r['engine_cpu_ms_per_req']:.1f} |")
    print(f"targets: judge busy >= {TARGET_BUSY}, judge / bare >= {TARGET_RATIO}; (!) = missed")
    errors = sum(r["judge_errors"] + r["bare_errors"] for r in rows)
    if errors:
        print(f"WARNING: {errors} failed requests or error results (see above)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
