"""Does ``judge --ray`` scale with Ray workers? edits/s for 1, 2 and 4 Ray
workers against the single-process ``judge`` on the same manifest and engine.

    python benchmarks/ray_scale.py                 # both regimes, workers 1 2 4: ~5-6 min on 2 shared cores
    python benchmarks/ray_scale.py --quick         # 2 workers only, fewer edits, 1024px: ~2 min (a smoke run)
    python benchmarks/ray_scale.py --regimes engine --workers 2 4 --json figures.json

Both paths are the CLI, in this process: ``spatialreward judge MANIFEST -o OUT
--backend openai --base-url URL --served-model M`` (the baseline), and the same
command plus ``--ray --replicas R`` after ``ray.init(num_cpus=N,
include_dashboard=False)`` (``run_manifest`` joins the Ray already started).
"Workers" = N: the Ray Data ``map`` stages (prepare: decode, resize,
PNG-encode, chat bodies; finish: records) are tasks of 1 CPU each, and the
HTTP actors (one per request kind and pass, SC, PQ and their constrained
repairs: 4) take 0.1 CPU each, so the local Ray gets ``num_cpus=N + 1``: the
actors' 0.4 CPU plus N CPUs for the map tasks, at most N of them at once.
(With ``num_cpus=1`` a ``--ray`` run never finishes: the actors hold 0.4 CPU
and no 1-CPU map task can be scheduled; ray.py has no knob for the map
stages' CPUs. Each run here is bounded: ``RUN_TIMEOUT_S``.)
Each worker count gets its own ``ray.init``, one timed run per regime, then
``ray.shutdown``: a Ray run's wall time includes what every ``--ray`` run pays
(Ray Data starts its HTTP actors, one per stage, for each run; the first run
after ``ray.init`` also starts the worker processes). The baseline ``judge``
gets an untimed 8-edit warm-up (imports).

The engine: an OpenAI-compatible fake (tests/fake_openai.py's ``FakeOpenAI``)
in a child process on 127.0.0.1, with ``--slots`` requests served at once (the
others wait inside it, as in a real engine's queue); each answer is held
``--delay-s``; the answer is a canned valid SC or PQ answer (the images are not
decoded, except for the two start-up probes). It records each chat request's
arrival and answer times: "engine edits/s" counts the edits over the window
from the first chat request's arrival to the last answer (start-up, server
check, Ray's actor start and the final merge excluded); "wall edits/s" over the
whole command.

Regimes:

- engine: the engine is the limit (``--slots`` 8, ``--delay-s`` 0.3 s: at most
  26.7 requests/s, 13.3 edits/s), small images (256x256 PNG). Both clients keep
  16 requests in flight (``--concurrency 16`` / ``--replicas 16``), more than the
  slots, so a client that keeps up keeps every slot busy. Target: Ray / judge
  >= 0.95 (engine edits/s), for every worker count.
- prep: preprocessing is the limit (photo-like 2048x2048 JPEG sources and
  edited images made by code, 16 distinct pairs, 48 edits; the engine answers
  at once, 64 slots; 8 in flight per client); throughput should grow with the workers, up to the cores the
  machine has: on 2 cores, at most ~2x from 1 worker, and 4 workers cannot beat 2.
  The judge's own prepare pool uses max(2, min(8, CPUs)) threads.

The baseline ``judge`` runs before and after the Ray runs of each regime (the
machine may be shared: the two figures show how much it drifted); ratios are
against their mean. Load average and the other processes' CPU use are printed.
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
import urllib.request
from pathlib import Path

from bench_common import header, load_average

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
SERVED = "served-model"
TARGET_RATIO = 0.95
RUN_TIMEOUT_S = 180.0  # one judge run; past it the script exits (a stuck Ray run must not hang it)


# -- the engine (child process) -----------------------------------------------------------
def engine_main(args) -> None:
    sys.path.insert(0, str(TESTS))
    from fake_openai import PQ_ANSWER, SC_ANSWER, FakeOpenAI

    slots = threading.BoundedSemaphore(args.slots)
    log: list[tuple[float, float]] = []
    lock = threading.Lock()

    class Engine(FakeOpenAI):
        def _answer(self, handler, body, fault):
            if body.get("max_tokens") == 1 or fault:  # the start-up probes: the fake's own answer (usage from images)
                return super()._answer(handler, body, fault)
            arrived = time.time()
            with slots:
                if args.delay_s:
                    time.sleep(args.delay_s)
            text = body["messages"][0]["content"][-1].get("text", "")
            answer = SC_ANSWER if "Editing instruction" in text else PQ_ANSWER
            self._send(handler, 200, {
                "id": "chatcmpl-bench", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 17, "total_tokens": 1017}})
            with lock:
                log.append((arrived, time.time()))

        def _get(self, handler):
            if handler.path == "/stats":
                with lock:
                    data, log[:] = list(log), []
                return self._send(handler, 200, {"log": data})
            return super()._get(handler)

        def _post(self, handler):
            super()._post(handler)
            with self._lock:  # keep no bodies (images): memory stays flat
                self.requests.clear()

    engine = Engine(models={SERVED: 32768}).start()
    print(engine.port, flush=True)
    sys.stdin.read()  # until the parent closes the pipe


class EngineProcess:
    def __init__(self, slots: int, delay_s: float):
        self.proc = subprocess.Popen([sys.executable, __file__, "--engine", "--slots", str(slots), "--delay-s",
                                      str(delay_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/v1"
        self.slots, self.delay_s = slots, delay_s

    def take_log(self) -> list[tuple[float, float]]:
        with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/stats", timeout=30) as response:
            return [tuple(x) for x in json.load(response)["log"]]

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(10)


# -- inputs ------------------------------------------------------------------------------
def photo(rng, size: int):
    """A photo-like picture: smooth gradients, shapes, fine noise (JPEG-compressible, not trivially)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([np.sin(x * rng.uniform(2, 6) + rng.uniform(0, 6)), np.cos(y * rng.uniform(2, 6)),
                     np.sin((x + y) * rng.uniform(2, 6))], -1) * 80 + 128
    base += rng.normal(0, 12, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 20, size // 4, 2)
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(1))


def make_manifest(folder: Path, edits: int, size: int, fmt: str, distinct: int = 16) -> Path:
    import numpy as np
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    pairs = []
    for i in range(distinct):
        source = photo(rng, size)
        edited = source.copy()
        x0, y0 = rng.integers(0, size // 2, 2)
        ImageDraw.Draw(edited).rectangle([x0, y0, x0 + size // 4, y0 + size // 4], fill=(220, 30, 30))
        paths = folder / f"source{i}.{fmt}", folder / f"edited{i}.{fmt}"
        for image, path in zip((source, edited), paths):
            image.save(path, quality=90) if fmt == "jpg" else image.save(path)
        pairs.append(paths)
    manifest = folder / "manifest.jsonl"
    with manifest.open("w") as handle:
        for i in range(edits):
            source, edited = pairs[i % distinct]
            handle.write(json.dumps({"id": f"e{i}", "source": source.name, "edited": edited.name,
                                     "instruction": f"Add a red square, edit {i}"}) + "\n")
    return manifest


# -- runs --------------------------------------------------------------------------------
def cpu_times() -> tuple[float, float]:
    """(all CPU seconds used on the machine, this process tree's): from /proc/stat and os.times."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def _timed_out(argv) -> None:
    print(f"TIMEOUT: a run took over {RUN_TIMEOUT_S:.0f} s (stuck?): {' '.join(argv)}", flush=True)
    os._exit(2)  # Ray's own processes go with their driver


def run_cli(manifest: Path, out: Path, engine: EngineProcess, *, ray: bool, inflight: int) -> dict:
    from spatialreward.commands import main

    argv = ["judge", str(manifest), "-o", str(out), "--backend", "openai", "--base-url", engine.url,
            "--served-model", SERVED, "-q", "--overwrite"]
    argv += ["--ray", "--replicas", str(inflight)] if ray else ["--concurrency", str(inflight)]
    engine.take_log()  # drop anything earlier
    busy0, _ = cpu_times()
    started = time.perf_counter()
    watchdog = threading.Timer(RUN_TIMEOUT_S, _timed_out, (argv,))
    watchdog.daemon = True
    watchdog.start()
    try:
        main(argv, standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - started
    busy1, _ = cpu_times()
    log = engine.take_log()
    out.with_suffix(".engine-log.json").write_text(json.dumps(log))  # (arrival, answer) per chat request
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in records if r.get("status") != "ok"]
    if errors:
        print(f"    {len(errors)} error records; first: {errors[0].get('error')}", flush=True)
    window = max(b for _, b in log) - min(a for a, _ in log) if log else float("nan")
    edits = len(records)
    return {"edits": edits, "errors": len(errors), "requests": len(log), "wall_s": wall, "window_s": window,
            "wall_eps": edits / wall, "engine_eps": edits / window,
            "machine_cores": (busy1 - busy0) / wall}


def strip(records_file: Path) -> list[str]:
    return records_file.read_text().splitlines()


def regime_cases(args) -> dict:
    q = args.quick
    return {
        "engine": {"edits": args.edits_engine or (32 if q else 512), "size": 256, "fmt": "png",
                   "slots": 8, "delay_s": args.delay_s if args.delay_s is not None else (0.2 if q else 0.3),
                   "inflight": 16},
        "prep": {"edits": args.edits_prep or (16 if q else 48), "size": args.prep_size or (1024 if q else 2048),
                 "fmt": "jpg", "slots": 64, "delay_s": 0.0, "inflight": 8},
    }


def fmt_row(label: str, r: dict, base: dict | None) -> str:
    ratio = f"{r['engine_eps'] / base['engine_eps']:.2f}" if base else "1.00"
    wratio = f"{r['wall_eps'] / base['wall_eps']:.2f}" if base else "1.00"
    return (f"| {label:<22} | {r['edits']:>5} | {r['wall_s']:>6.1f} | {r['wall_eps']:>8.2f} | {wratio:>6} | "
            f"{r['window_s']:>6.1f} | {r['engine_eps']:>8.2f} | {ratio:>6} | {r['machine_cores']:>5.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", help="Ray workers per case (default 1 2 4; --quick 2)")
    parser.add_argument("--regimes", nargs="+", choices=["engine", "prep"], default=["engine", "prep"])
    parser.add_argument("--edits-engine", type=int, help="edits, engine regime (default 512: a Ray run fills and drains each stage once per block, ~0.7 s here, which 128 edits do not amortize; --quick 32)")
    parser.add_argument("--edits-prep", type=int, help="edits, prep regime (default 48; --quick 16)")
    parser.add_argument("--prep-size", type=int, help="image side, prep regime (default 2048; --quick 1024)")
    parser.add_argument("--delay-s", type=float, help="engine regime: answer time (default 0.3; --quick 0.2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer edits, smaller images, one baseline")
    parser.add_argument("--workdir", help="where images, manifests and outputs go (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:
        engine_main(args)
        return 0
    args.workers = args.workers or ([2] if args.quick else [1, 2, 4])

    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    header(f"ray {ray.__version__}")
    started = time.perf_counter()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ray_scale-"))
    cases = regime_cases(args)
    engines, manifests, results = {}, {}, {r: {"judge": [], "ray": {}} for r in args.regimes}
    try:
        for name in args.regimes:
            c = cases[name]
            t = time.perf_counter()
            manifests[name] = make_manifest(work / name, c["edits"], c["size"], c["fmt"])
            engines[name] = EngineProcess(c["slots"], c["delay_s"])
            print(f"{name}: {c['edits']} edits, {c['size']}x{c['size']} {c['fmt']}, engine {c['slots']} slots x "
                  f"{c['delay_s']} s, {c['inflight']} in flight per client (inputs made in "
                  f"{time.perf_counter() - t:.1f} s)", flush=True)
        warm = {name: make_manifest(work / f"{name}-warm", 8, 256, "png", distinct=2) for name in args.regimes}

        def baseline(name: str) -> None:
            c = cases[name]
            run_cli(warm[name], work / f"{name}-warm-judge.jsonl", engines[name], ray=False, inflight=c["inflight"])
            r = run_cli(manifests[name], work / f"{name}-judge.jsonl", engines[name], ray=False, inflight=c["inflight"])
            results[name]["judge"].append(r)
            print(f"  {name} judge: {r['wall_eps']:.2f} edits/s wall, {r['engine_eps']:.2f} engine "
                  f"(load {load_average()})", flush=True)

        for name in args.regimes:
            baseline(name)
        for n in args.workers:
            ray.init(num_cpus=n + 1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            try:
                for name in args.regimes:
                    c = cases[name]
                    r = run_cli(manifests[name], work / f"{name}-ray{n}.jsonl", engines[name], ray=True,
                                inflight=c["inflight"])
                    same = strip(work / f"{name}-ray{n}.jsonl") == strip(work / f"{name}-judge.jsonl")
                    r["identical"] = same
                    results[name]["ray"][n] = r
                    print(f"  {name} ray {n} workers: {r['wall_eps']:.2f} edits/s wall, {r['engine_eps']:.2f} engine, "
                          f"records {'identical' if same else 'DIFFER'} (load {load_average()})", flush=True)
            finally:
                ray.shutdown()
        if not args.quick:
            for name in args.regimes:
                baseline(name)
    finally:
        for engine in engines.values():
            engine.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"load average {load_average()}; {time.perf_counter() - started:.0f} s in all")
    verdicts = {}
    for name in args.regimes:
        c, res = cases[name], results[name]
        judges = res["judge"]
        base = {k: sum(j[k] for j in judges) / len(judges) for k in ("wall_eps", "engine_eps")}
        print()
        print(f"### {name}: {c['edits']} edits, {c['size']}px {c['fmt']}, engine {c['slots']} slots x {c['delay_s']} s")
        print()
        print("| run                    | edits | wall s | edits/s | / judge | engine window s | engine edits/s | / judge | busy cores |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, j in enumerate(judges):
            print(fmt_row(f"judge ({'before' if k == 0 else 'after'})", j, None))
        for n, r in res["ray"].items():
            print(fmt_row(f"ray, {n} worker{'s' if n > 1 else ''}", r, base))
        ratios = {n: r["engine_eps"] / base["engine_eps"] for n, r in res["ray"].items()}
        wall = {n: r["wall_eps"] / base["wall_eps"] for n, r in res["ray"].items()}
        identical = all(r.get("identical") for r in res["ray"].values())
        if name == "engine":
            ok = all(v >= TARGET_RATIO for v in ratios.values())
            line = (f"engine-limited: Ray/judge (engine edits/s) {min(ratios.values()):.2f}-{max(ratios.values()):.2f} "
                    f"(target >= {TARGET_RATIO}): {'PASS' if ok else 'FAIL'}; wall (incl. Ray start-up and merge) "
                    f"{min(wall.values()):.2f}-{max(wall.values()):.2f}")
        else:
            ns = sorted(res["ray"])
            growth = ", ".join(f"{n}: {res['ray'][n]['wall_eps'] / res['ray'][ns[0]]['wall_eps']:.2f}x" for n in ns)
            line = (f"prep-limited: Ray edits/s vs {ns[0]} worker: {growth} (wall); vs judge: "
                    + ", ".join(f"{n}: {wall[n]:.2f}" for n in ns) + f" ({os.cpu_count()} CPUs)")
            ok = True
        line += "; records identical to judge's" if identical else "; RECORDS DIFFER from judge's"
        verdicts[name] = {"ok": ok and identical, "line": line}
        print()
        print("verdict: " + line)
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases, "results": results, "verdicts": verdicts}, indent=2,
                                              default=str))
    return 0 if all(v["ok"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
