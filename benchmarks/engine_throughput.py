"""Requests/s against one running OpenAI-compatible server, three ways, in one run:

1. ceiling: a bare client sending the judge's own SC/PQ request bodies at high
   concurrency (no images decoded, no parsing: what the engine itself gives);
2. `spatialreward judge --backend openai` at its default concurrency;
3. the same at --concurrency 1 (one request at a time).

    python benchmarks/engine_throughput.py --base-url http://127.0.0.1:8000/v1 --model MODEL \\
        [--edits 64] [--max-new-tokens 64] [--ceiling-concurrency 64]

Each edit is two requests (SC and PQ). The judge runs are real CLI processes
(model loading and start-up checks excluded from the timing: the rate is taken
from the records' arrival, first to last). Printed: requests/s of each and the
ratios (2)/(1) and (2)/(3). Target: (2) at least 90 % of (1), far above (3).
A random-weight model answers garbage; `--structured always` makes every answer
a schema-valid JSON of a realistic length, so the judge does its full work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def make_photos(folder: Path, n: int) -> list[tuple[Path, Path, str]]:
    """n (source, edited, instruction) triples from scikit-image photos edited by code."""
    from PIL import Image, ImageDraw, ImageFilter
    from skimage import data

    bases = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("coffee", "astronaut", "chelsea", "rocket")]
    triples = []
    for i in range(n):
        base = bases[i % len(bases)]
        edited = base.filter(ImageFilter.GaussianBlur(1 + i % 5)) if i % 2 else base.copy()
        if not i % 2:
            ImageDraw.Draw(edited).rectangle([20 + i, 20, 120 + i, 120], fill=(200, 30, 30))
        src, out = folder / f"src{i % len(bases)}.png", folder / f"edit{i}.png"
        if not src.exists():
            base.save(src)
        edited.save(out)
        triples.append((src, out, f"edit number {i}: make a change"))
    return triples


def ceiling(base_url: str, model: str, triples, generation, concurrency: int) -> tuple[float, int]:
    """The engine alone: the judge's request bodies, prebuilt, sent as fast as the engine takes them."""
    import httpx

    from spatialreward.backends.openai_backend import OpenAIBackend
    from spatialreward.images import load_image
    from spatialreward.requests import pq_request, sc_request

    backend = OpenAIBackend([base_url], served_model=model, concurrency=concurrency)
    bodies = []
    for src, edited, instruction in triples:
        s, e = load_image(src), load_image(edited)
        for request in (sc_request(s, e, instruction), pq_request(e)):
            bodies.append(json.dumps(backend.payload(request, generation, constrained=True)).encode())
    backend.close()
    url = base_url.rstrip("/") + "/chat/completions"
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency))
    errors = 0
    lock = threading.Lock()

    def send(body: bytes) -> None:
        nonlocal errors
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            with lock:
                errors += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, bodies))
    seconds = time.perf_counter() - started
    client.close()
    return len(bodies) / seconds, errors


def judge_rate(base_url: str, model: str, manifest: Path, out: Path, max_new_tokens: int,
               concurrency: int | None) -> tuple[float, int]:
    """Requests/s of a real `spatialreward judge --backend openai` run, timed
    from its first record to its last (start-up checks excluded)."""
    exe = shutil.which("spatialreward", path=str(Path(sys.executable).parent)) or shutil.which("spatialreward")
    cmd = [exe, "judge", str(manifest), "-o", str(out), "--overwrite", "-q",
           "--backend", "openai", "--base-url", base_url, "--model", model, "--structured", "always",
           "--max-new-tokens", str(max_new_tokens)]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency)]
    stamps: list[float] = []
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = 0
    while True:
        finished = proc.poll() is not None
        if out.exists():
            lines = out.read_bytes().count(b"\n")
            stamps.extend([time.perf_counter()] * (lines - seen))
            seen = max(seen, lines)
        if finished:
            break
        time.sleep(0.01)
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"judge failed ({proc.returncode}): {stderr.strip()[-500:]}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = sum(r["status"] != "ok" for r in records)
    stages = sorted({r["error"]["stage"] for r in records if r["error"]})
    if errors:
        print(f"    error records by stage: {stages}; first: {next(r['error']['message'] for r in records if r['error'])[:160]}")
    # rate over the records after the first: (n - 1) edits, 2 requests each, between first and last arrival
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return 2 * (len(stamps) - 1) / span, errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True, help="the served model (name or local folder as served)")
    parser.add_argument("--edits", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ceiling-concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    from spatialreward.config import Generation

    generation = Generation(max_new_tokens=args.max_new_tokens, structured="always")
    with tempfile.TemporaryDirectory(prefix="spatialreward-engine-bench-") as tmp:
        folder = Path(tmp)
        triples = make_photos(folder, args.edits)
        manifest = folder / "m.jsonl"
        manifest.write_text("".join(json.dumps({"id": f"e{i}", "source": str(s), "edited": str(e), "instruction": t}) + "\n"
                                    for i, (s, e, t) in enumerate(triples)))
        print(f"{args.edits} edits ({2 * args.edits} requests), max_new_tokens {args.max_new_tokens}, "
              f"server {args.base_url}, {os.cpu_count()} CPUs here", flush=True)
        rate1, err1 = ceiling(args.base_url, args.model, triples, generation, args.ceiling_concurrency)
        print(f"(1) bare client, concurrency {args.ceiling_concurrency}: {rate1:8.2f} req/s ({err1} errors)", flush=True)
        rate2, err2 = judge_rate(args.base_url, args.model, manifest, folder / "a.jsonl", args.max_new_tokens, None)
        print(f"(2) judge, default concurrency:   {rate2:8.2f} req/s ({err2} error records)", flush=True)
        rate3, err3 = judge_rate(args.base_url, args.model, manifest, folder / "b.jsonl", args.max_new_tokens, 1)
        print(f"(3) judge, --concurrency 1:       {rate3:8.2f} req/s ({err3} error records)", flush=True)
        print(f"(2)/(1) = {rate2 / rate1:.2f}   (2)/(3) = {rate2 / rate3:.2f}")


if __name__ == "__main__":
    main()
