#!/usr/bin/env python
"""Host-side cost per edit of `spatialreward judge`, with the model left out.

Runs the real pipeline -- manifest -> image decode -> requests -> chat template
+ Qwen3-VL processor preprocessing -> parse -> aggregate -> records -> results
file -> summary -- through ``spatialreward.runner.run``, with a backend that
does everything the transformers backend does on the host *except*
``model.generate``: it renders each request with the chat template, runs the
real Qwen3-VL processor (published pixel budget, padding, tensors), then
returns canned, valid SC/PQ answers (decoded from token ids through the real
backend's answer path) so parsing does real work.

Each manifest size runs in a fresh subprocess, so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own; comparing sizes shows
whether memory grows with the manifest. No tracemalloc (it slows things down).

Inputs are built once in the work folder: a tiny random-weight Qwen3-VL model
folder (for its processor and tokenizer; the weights are never loaded),
scikit-image photos saved as JPEG/PNG at realistic sizes with edits made by
code, and one manifest per size (~10% multi-candidate lines, a ``category``).

    python benchmarks/host_overhead.py                      # sizes 500, 2000
    python benchmarks/host_overhead.py --sizes 500 2000 8000
    python benchmarks/host_overhead.py --workdir /tmp/bench --keep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

DEFAULT_SIZES = (500, 2000)
DEFAULT_BATCH = 8
WARMUP_EDITS = 16  # judged before timing starts (lazy imports, allocator warm-up)
MULTI_EVERY = 10  # one manifest line in ten is a multi-candidate group

# -- inputs -------------------------------------------------------------------

# (file name, scikit-image photo, size, crop box before resizing or None)
SOURCES = (
    ("coffee.jpg", "coffee", (1024, 768), None),
    ("astronaut.png", "astronaut", (512, 512), None),
    ("chelsea.png", "chelsea", (1024, 1024), (75, 0, 375, 300)),
)

# (suffix, instruction, category)
EDITS = (
    ("box", "Add a red box in the upper right part of the image", "add"),
    ("blur", "Blur the area in the middle of the photo", "blur"),
    ("recolor", "Make the lower left corner look warmer and more saturated", "recolor"),
)


def build_images(folder: Path) -> list[tuple[str, list[str], str, str]]:
    """Write the source photos and their edits; return (source, [edited...], instruction, category)."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for name, photo, size, crop in SOURCES:
        image = Image.fromarray(getattr(data, photo)()).convert("RGB")
        if crop:
            image = image.crop(crop)
        image = image.resize(size, Image.BICUBIC)
        stem, ext = name.rsplit(".", 1)
        fmt = {"jpg": "JPEG", "png": "PNG"}[ext]
        extra = {"quality": 90} if fmt == "JPEG" else {}

        def save(file_name: str, img: Image.Image) -> str:
            path = folder / file_name
            if not path.exists():
                img.save(path, fmt, **extra)
            return f"images/{file_name}"

        source = save(name, image)
        w, h = image.size
        edited = []
        for suffix, _, _ in EDITS:
            out = image.copy()
            if suffix == "box":
                ImageDraw.Draw(out).rectangle([int(w * .6), int(h * .1), int(w * .85), int(h * .35)], fill=(220, 20, 20))
            elif suffix == "blur":
                box = (int(w * .3), int(h * .3), int(w * .7), int(h * .7))
                out.paste(out.crop(box).filter(ImageFilter.GaussianBlur(8)), box[:2])
            else:
                box = (0, int(h * .55), int(w * .45), h)
                region = ImageEnhance.Color(out.crop(box)).enhance(1.8)
                r, g, b = region.split()
                out.paste(Image.merge("RGB", (r.point(lambda v: min(255, v + 25)), g, b)), box[:2])
            edited.append(save(f"{stem}_{suffix}.{ext}", out))
        for (suffix, instruction, category), path in zip(EDITS, edited):
            groups.append((source, [path], instruction, category))
        groups.append((source, edited, "Make the image look better", "multi"))
    return groups


def write_manifest(path: Path, edits: int, inputs, prefix: str = "e") -> tuple[int, int]:
    """A manifest of exactly ``edits`` edits (samples); returns (lines, multi-candidate lines)."""
    singles = [g for g in inputs if len(g[1]) == 1]
    multis = [g for g in inputs if len(g[1]) > 1]
    lines = multi = 0
    left = edits
    with path.open("w", encoding="utf-8") as handle:
        while left:
            if lines % MULTI_EVERY == MULTI_EVERY - 1 and left >= 2:
                source, edited, instruction, category = multis[multi % len(multis)]
                edited = edited[: min(left, 2 + multi % 2)]  # groups of 3 and 2, alternately
                multi += 1
                entry = {"id": f"{prefix}{lines:06d}", "instruction": instruction, "source": source,
                         "edited": edited, "category": category}
            else:
                source, edited, instruction, category = singles[lines % len(singles)]
                entry = {"id": f"{prefix}{lines:06d}", "instruction": instruction, "source": source,
                         "edited": edited[0], "category": category}
            handle.write(json.dumps(entry) + "\n")
            left -= len(entry["edited"]) if isinstance(entry["edited"], list) else 1
            lines += 1
    return lines, multi


def prepare(workdir: Path, sizes: list[int]) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    if not (model_dir / "processor_config.json").exists():
        from spatialreward.testing.random_model import build

        build(model_dir)
    inputs = build_images(workdir / "images")
    manifests = {}
    for n in sizes:
        path = workdir / f"manifest-{n}.jsonl"
        lines, multi = write_manifest(path, n, inputs)
        manifests[n] = {"path": str(path), "lines": lines, "multi_lines": multi, "bytes": path.stat().st_size}
    write_manifest(workdir / "warmup.jsonl", WARMUP_EDITS, inputs, prefix="w")
    return {"model": str(model_dir), "manifests": manifests}


# -- the benchmark backend (child process) ------------------------------------

SC_TEMPLATES = (
    '{{\n"edit_region" : [{regions}],\n"reasoning" : "{reasoning}",\n"score" : [{s1}, {s2}]\n}}',
    '<think>\nThe instruction asks for a local change. Comparing the two images, the change is visible '
    'in {n} place(s); the rest of the scene looks untouched.\n</think>\n'
    '{{"edit_region": [{regions}], "reasoning": "{reasoning}", "score": [{s1}, {s2}]}}',
    'Here is my evaluation.\n```json\n{{\n  "edit_region": [{regions}],\n  "reasoning": "{reasoning}",\n'
    '  "score": [{s1}, {s2}]\n}}\n```',
)
PQ_TEMPLATES = (
    '{{\n"reasoning" : "{reasoning}",\n"score" : [{s1}, {s2}]\n}}',
    '<think>\nLooking at lighting, shadows, edges and texture.\n</think>\n'
    '{{"reasoning": "{reasoning}", "score": [{s1}, {s2}]}}',
)
LABELS = ("the red rectangle on the table", "the blurred centre of the cup", "the warmer lower left corner",
          "the cat's face", "the astronaut's helmet")


def canned_answers(count: int = 24) -> tuple[list[str], list[str]]:
    """Deterministic, valid SC and PQ answers of realistic length (1-2 regions each)."""
    sc, pq = [], []
    for k in range(count):
        n = 1 + k % 2
        regions, parts = [], []
        for r in range(n):
            x1, y1 = 40 + 37 * ((k + r) % 11), 60 + 29 * ((k * 3 + r) % 13)
            box = [x1, y1, min(1000, x1 + 180 + 13 * (k % 7)), min(1000, y1 + 220 + 11 * (k % 5))]
            label = LABELS[(k + r) % len(LABELS)]
            regions.append(json.dumps({"id": r, "label": label, "bbox_2d": box}))
            parts.append(f"<|bbox_{r}|> {label.capitalize()} was changed as asked; its edges blend with the "
                         "surrounding texture and the lighting matches the scene.")
        reasoning = " ".join(parts) + (" <|global|> Outside the edited region(s) the image is unchanged, so "
                                       "the edit is minimal and effective.")
        sc.append(SC_TEMPLATES[k % len(SC_TEMPLATES)].format(
            regions=", ".join(regions), reasoning=reasoning, n=n, s1=12 + k % 14, s2=10 + (k * 7) % 16))
        pq.append(PQ_TEMPLATES[k % len(PQ_TEMPLATES)].format(
            reasoning="The lighting and shadows are consistent and the perspective is plausible. Edges around "
                      "the edited area are clean; no visible distortion, watermark or blurred faces.",
            s1=14 + (k * 5) % 12, s2=13 + (k * 3) % 13))
    return sc, pq


BACKGROUND = "bg: "  # prefix of stages timed on another thread than the main one (overlapped)


class Clock:
    """perf_counter accumulators, one per stage. Time spent on a background
    thread (the judge's image loader) is kept apart, prefixed ``bg: ``: it
    overlaps the main thread's work and is not part of the wall-clock sum."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.main = threading.main_thread()

    def add(self, stage: str, dt: float) -> None:
        if threading.current_thread() is not self.main:
            stage = BACKGROUND + stage
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, stage: str, fn):
        perf = time.perf_counter

        def timed(*args, **kwargs):
            t0 = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, perf() - t0)

        return timed

    def iterate(self, stage: str, iterable):
        perf = time.perf_counter
        it = iter(iterable)
        while True:
            t0 = perf()
            try:
                item = next(it)
            except StopIteration:
                self.add(stage, perf() - t0)
                return
            self.add(stage, perf() - t0)
            yield item


def make_backend(model_dir: str, clock: Clock):
    import torch
    from transformers import AutoProcessor

    from spatialreward.backends.transformers_backend import TransformersBackend

    class HostOnlyBackend(TransformersBackend):
        """TransformersBackend.generate up to (not including) model.generate;
        then canned answers, decoded from token ids like real output."""

        def __init__(self, processor, *, model_id: str):
            super().__init__(None, processor, model_id=model_id, device="cpu", dtype="float32")
            sc, pq = canned_answers()
            stop = self.stop_ids[0]
            encode = self.tokenizer.encode
            self._canned = {
                "sc": [encode(t, add_special_tokens=False) + [stop] for t in sc],
                "pq": [encode(t, add_special_tokens=False) + [stop] for t in pq],
            }
            self._turn = {"sc": 0, "pq": 0}
            self.requests = 0
            self.images = 0
            self.prompt_tokens = 0

        def generate(self, requests, generation, *, constrained):
            perf = time.perf_counter
            t0 = perf()
            texts = [
                self.processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False)
                for r in requests
            ]
            t1 = perf()
            images = [image for r in requests for image in r.images]
            images_before = clock.seconds.get("preprocess: images", 0.0)
            size = {"longest_edge": generation.max_pixels, "shortest_edge": generation.min_pixels}
            inputs = self.processor(
                text=texts, images=images, padding=True, return_tensors="pt", images_kwargs={"size": size}
            ).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(torch.float32)
            t2 = perf()
            in_images = clock.seconds.get("preprocess: images", 0.0) - images_before
            # -- model.generate would run here; instead, canned rows (answer + stop + padding) --
            rows = []
            for r in requests:
                pool = self._canned[r.kind]
                rows.append(pool[self._turn[r.kind] % len(pool)])
                self._turn[r.kind] += 1
            width = max(len(r) for r in rows)
            rows = [r + [self.pad_id] * (width - len(r)) for r in rows]
            answers = [self._answer(row) for row in rows]
            t3 = perf()
            self.requests += len(requests)
            self.images += len(images)
            self.prompt_tokens += int(inputs["attention_mask"].sum())
            del inputs  # the real backend drops the batch tensors on return; time it here
            t4 = perf()
            clock.add("chat template", t1 - t0)
            clock.add("preprocess: text, pad", t2 - t1 - in_images)
            clock.add("answer decode", t3 - t2)
            clock.add("free batch tensors", t4 - t3)
            return answers

    processor = AutoProcessor.from_pretrained(model_dir)
    # Time the image half of the processor call (resize, rescale, normalize, patchify) on its own.
    image_processor = processor.image_processor
    image_call = type(image_processor).__call__
    image_timed = clock.wrap("preprocess: images", image_call)
    image_processor.__class__ = type(type(image_processor).__name__, (type(image_processor),),
                                     {"__call__": lambda self, *a, **k: image_timed(self, *a, **k)})
    return HostOnlyBackend(processor, model_id=model_dir)


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _busy_cpu_s() -> float:
    """CPU seconds spent busy by the whole machine so far (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _timed_executor(base, clock: Clock):
    class TimedExecutor(base):
        def submit(self, fn, /, *args, **kwargs):
            future = super().submit(fn, *args, **kwargs)
            # A weak reference: a closure holding the future, stored on the future, would be a
            # reference cycle that keeps each batch's decoded images alive until a full gc pass.
            ref = weakref.ref(future)
            result = type(future).result

            def timed_result(timeout=None):
                t0 = time.perf_counter()
                try:
                    return result(ref(), timeout)
                finally:
                    clock.add("wait for image loader", time.perf_counter() - t0)

            future.result = timed_result
            return future

    return TimedExecutor


def instrument(clock: Clock) -> list[str]:
    """Time the pipeline's stages by wrapping the functions it calls, wherever the
    package looks them up (benchmark-only; nothing in the package changes). A
    name the package no longer has is skipped and returned (its time lands in
    "other")."""
    import importlib

    modules = {name: importlib.import_module(f"spatialreward.{name}")
               for name in ("judge", "runner", "records", "images", "parse", "requests", "aggregate",
                            "output", "summary", "manifest")}
    targets = (
        ("image decode", "images", "load_image"),
        ("requests", "requests", "sc_request"),
        ("requests", "requests", "pq_request"),
        ("parse", "parse", "parse_sc"),
        ("parse", "parse", "parse_pq"),
        ("aggregate", "aggregate", "aggregate"),
        ("records", "records", "build_record"),
        ("records", "records", "rank_group"),
        ("summary", "summary", "summarize"),
    )
    missing = []
    for stage, home, name in targets:
        original = getattr(modules[home], name, None)
        if original is None:
            missing.append(f"{home}.{name}")
            continue
        timed = clock.wrap(stage, original)
        for module in modules.values():  # the defining module and every `from .x import name`
            if getattr(module, name, None) is original:
                setattr(module, name, timed)
    executor = getattr(modules["judge"], "ThreadPoolExecutor", None)
    if executor is not None:  # images decoded on a worker thread: time the main thread's wait for them
        modules["judge"].ThreadPoolExecutor = _timed_executor(executor, clock)
    writer = getattr(modules["output"], "RecordWriter", None)
    if writer is not None and hasattr(writer, "write"):
        writer.write = clock.wrap("write", writer.write)
    else:
        missing.append("output.RecordWriter.write")
    return missing


def child(args) -> dict:
    """One manifest size, in this (fresh) process; prints a JSON result."""
    t_start = time.perf_counter()
    rss_at_start = _rss_kib()
    import spatialreward.runner as runner_mod
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.manifest import read_manifest

    clock = Clock()
    untimed: list[str] = []
    if args.breakdown:
        untimed = instrument(clock)

    work = Path(args.workdir)
    backend = make_backend(args.model, clock)
    config = load_config(None, {"model": args.model, "batch_size": args.batch_size})
    judge = Judge(backend, config)
    rss_loaded = _rss_kib()
    t_loaded = time.perf_counter()

    # Warm-up (not timed): first-call costs (lazy imports, kernels, allocator arenas).
    warm_out = work / f"out-warmup-{args.size}.jsonl"
    samples = clock.iterate("manifest", read_manifest(work / "warmup.jsonl")) if args.breakdown \
        else read_manifest(work / "warmup.jsonl")
    runner_mod.run(judge, samples, warm_out, overwrite=True)
    t_warm = time.perf_counter() - t_loaded
    clock.reset()
    backend.requests = backend.images = backend.prompt_tokens = 0
    rss_warm = _rss_kib()
    maxrss_warm = _maxrss_kib()

    # The timed run, with RSS sampled along the way (cheap: one /proc read every ~5%).
    manifest = Path(args.manifest)
    out = work / f"out-{args.size}.jsonl"
    every = max(1, args.size // 20)
    trace: list[tuple[int, int, int]] = []  # (records, rss KiB, python allocated blocks)
    count = 0

    def on_record(_record: dict) -> None:
        nonlocal count
        count += 1
        if count % every == 0:
            trace.append((count, _rss_kib(), sys.getallocatedblocks()))

    samples = clock.iterate("manifest", read_manifest(manifest)) if args.breakdown else read_manifest(manifest)
    busy0 = _busy_cpu_s()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    report = runner_mod.run(judge, samples, out, overwrite=True, on_record=on_record)
    cpu = time.process_time() - cpu0
    elapsed = time.perf_counter() - t0
    others = max(0.0, (_busy_cpu_s() - busy0 - cpu) / elapsed)  # other processes' CPU use, in cores
    rss_end = _rss_kib()

    records = report.written
    summary = report.summary
    return {
        "size": args.size,
        "records": records,
        "ok": summary["ok"],
        "errors": summary["error"],
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "other_cores": others,
        "stages_s": dict(clock.seconds) if args.breakdown else {},
        "untimed": untimed,
        "requests": backend.requests,
        "images": backend.images,
        "prompt_tokens": backend.prompt_tokens,
        "output_bytes": out.stat().st_size,
        "summary_bytes": report.summary_file.stat().st_size if report.summary_file else 0,
        "rss_start_kib": rss_at_start,
        "rss_loaded_kib": rss_loaded,
        "rss_after_warmup_kib": rss_warm,
        "maxrss_after_warmup_kib": maxrss_warm,
        "rss_end_kib": rss_end,
        "maxrss_kib": _maxrss_kib(),
        "trace": trace,
        "setup_s": t_loaded - t_start,
        "warmup_s": t_warm,
    }


# -- parent: orchestrate and print ---------------------------------------------

STAGE_ORDER = ("manifest", "image decode", "wait for image loader", "requests", "chat template", "preprocess: images",
               "preprocess: text, pad", "free batch tensors",
               "answer decode", "parse", "aggregate", "records", "write", "summary")


def machine() -> list[str]:
    import PIL
    import torch
    import transformers

    import spatialreward

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"machine      {platform.machine()} {cpu}; {usable} usable CPU(s) (os.cpu_count {os.cpu_count()}), "
        f"torch threads {torch.get_num_threads()}",
        f"python       {platform.python_version()} ({platform.python_implementation()}) on {platform.system()} "
        f"{platform.release()}",
        f"packages     spatialreward {spatialreward.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Pillow {PIL.__version__}",
    ]


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def print_report(results: list[dict], info: dict, args) -> None:
    p = print
    p("")
    p("spatialreward host overhead (model excluded: the backend stops before model.generate)")
    for line in machine():
        p(line)
    p(f"config       batch_size {args.batch_size}, pixel budget 3136..589824 (published), passes 1, "
      f"structured auto; warm-up of {WARMUP_EDITS} edits not timed")
    p("inputs       3 sources (1024x768 JPEG, 512x512 PNG, 1024x1024 PNG), 9 edited images; "
      f"1 line in {MULTI_EVERY} multi-candidate (2-3 edits)")
    p("")
    header = f"{'edits':>6} {'lines':>6} {'wall s':>7} {'edits/s':>8} {'ms/edit':>8} {'cpu ms/edit':>11} {'others':>7} " \
             f"{'out KiB':>8} {'B/record':>8} {'peak RSS MiB':>12} {'RSS loaded':>10} {'RSS end':>8}"
    p(header)
    p("-" * len(header))
    for r in results:
        n = r["records"]
        m = info["manifests"][r["size"]]
        p(f"{n:>6} {m['lines']:>6} {r['elapsed_s']:>7.1f} {n / r['elapsed_s']:>8.1f} "
          f"{1000 * r['elapsed_s'] / n:>8.2f} {1000 * r['cpu_s'] / n:>11.2f} {r['other_cores']:>7.2f} "
          f"{r['output_bytes'] / 1024:>8.0f} "
          f"{r['output_bytes'] / n:>8.0f} {_mib(r['maxrss_kib']):>12} {_mib(r['rss_loaded_kib']):>10} "
          f"{_mib(r['rss_end_kib']):>8}")
    p("  (ms/edit = wall clock of runner.run per edit; cpu ms/edit = this process's CPU time, above wall when "
      "torch uses 2+ threads; others = CPU cores used by other processes meanwhile, ~0 on a quiet machine)")
    p("")
    if results and results[0]["stages_s"]:
        sizes = [r["records"] for r in results]
        header = f"{'stage (ms per edit)':<27}" + "".join(f"{f'N={n}':>10}" for n in sizes) + f"{'share':>8}"
        p(header)
        p("-" * len(header))
        last = results[-1]
        known = [s for s in STAGE_ORDER] + [BACKGROUND + s for s in STAGE_ORDER]
        seen = {k for r in results for k in r["stages_s"]}
        rows = [s for s in STAGE_ORDER if s in seen]
        rows += [k for k in sorted(seen) if k not in known and not k.startswith(BACKGROUND)]
        background = [BACKGROUND + s for s in STAGE_ORDER if BACKGROUND + s in seen]
        background += [k for k in sorted(seen) if k.startswith(BACKGROUND) and k not in background]

        def row(label: str, values, share: float | None) -> None:
            cells = "".join(f"{1000 * v / r['records']:>10.3f}" for v, r in zip(values, results))
            p(f"{label:<27}{cells}{'' if share is None else format(share, '>8.1%')}")

        def foreground(r: dict) -> float:
            return sum(v for k, v in r["stages_s"].items() if not k.startswith(BACKGROUND))

        for stage in rows:
            row(stage, [r["stages_s"].get(stage, 0.0) for r in results],
                last["stages_s"].get(stage, 0.0) / last["elapsed_s"])
        row("other (loop, glue)", [r["elapsed_s"] - foreground(r) for r in results],
            (last["elapsed_s"] - foreground(last)) / last["elapsed_s"])
        row("total (wall)", [r["elapsed_s"] for r in results], 1.0)
        if background:
            p("overlapped, on the judge's image-loader thread (not part of the wall-clock sum):")
            for stage in background:
                row("  " + stage[len(BACKGROUND):], [r["stages_s"].get(stage, 0.0) for r in results],
                    last["stages_s"].get(stage, 0.0) / last["elapsed_s"])
        if results[0].get("untimed"):
            p(f"  (not found in the package, so counted in other: {', '.join(results[0]['untimed'])})")
        p("  (image decode = load_image: PIL open + decode + EXIF + RGB, source and edited; wait for image loader = "
          "main thread blocked on the next batch's images; preprocess = the Qwen3-VL processor call, split into "
          "its image processor (resize, rescale, normalize, patchify) and the rest (expand image tokens, "
          "tokenize, pad); free batch tensors = dropping the processor output)")
        p("")
    header = f"{'memory (MiB)':<34}" + "".join(f"{'N=' + str(r['records']):>10}" for r in results)
    p(header)
    p("-" * len(header))
    rows = (
        ("RSS after imports + processor", lambda r: _mib(r["rss_loaded_kib"])),
        ("peak RSS after warm-up", lambda r: _mib(r["maxrss_after_warmup_kib"])),
        ("peak RSS, whole process", lambda r: _mib(r["maxrss_kib"])),
        ("RSS at first sample (~5%)", lambda r: _mib(r["trace"][0][1]) if r["trace"] else "-"),
        ("max RSS sampled during run", lambda r: _mib(max(t[1] for t in r["trace"])) if r["trace"] else "-"),
        ("RSS at end of run", lambda r: _mib(r["rss_end_kib"])),
        ("peak - peak after warm-up", lambda r: f"{(r['maxrss_kib'] - r['maxrss_after_warmup_kib']) / 1024:+.1f}"),
        ("py blocks/edit, 5% -> 95%", lambda r: f"{_blocks_per_edit(r):+.2f}" if len(r["trace"]) > 1 else "-"),
    )
    for label, fn in rows:
        p(f"{label:<34}" + "".join(f"{fn(r):>10}" for r in results))
    p("  (peak RSS = getrusage ru_maxrss of a fresh process per size; py blocks = sys.getallocatedblocks() "
      "growth per judged edit)")
    p("")
    for r in results:
        p(f"N={r['records']}: {r['ok']} ok, {r['errors']} errors; {r['requests']} processor requests, "
          f"{r['images']} images, {r['prompt_tokens'] / max(1, r['requests']):.0f} prompt tokens/request; "
          f"process setup {r['setup_s']:.1f} s, warm-up {r['warmup_s']:.1f} s")


def _blocks_per_edit(r: dict) -> float:
    # Up to the second-to-last sample: with the judge's look-ahead the manifest is
    # exhausted before the last batch, which frees its duplicate-id set.
    trace = r["trace"][:-1] if len(r["trace"]) > 2 else r["trace"]
    (n0, _, b0), (n1, _, b1) = trace[0], trace[-1]
    return (b1 - b0) / max(1, n1 - n0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Host-side cost per edit of `spatialreward judge` (manifest + image decode + preprocess + "
                    "parse + write; the model excluded) and peak memory, one fresh process per manifest size.",
        epilog="Default sizes finish in a few minutes on a 2-core CPU; add 8000 (--sizes 500 2000 8000) to check "
               "memory against a 4x longer manifest (about 4x the time of 2000).",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                        help=f"manifest sizes in edits, each run in a fresh process (default: "
                             f"{' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"judge batch size (default: {DEFAULT_BATCH})")
    parser.add_argument("--workdir", type=Path,
                        help="folder for the model, images, manifests and outputs; reused if it holds them; "
                             "kept (default: a temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder and print its path")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="no per-stage timers (to check that they cost nothing)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw figures to FILE")
    # internal: one size in a fresh process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if any(n < 1 for n in args.sizes) or args.batch_size < 1:
        parser.error("--sizes and --batch-size must be positive")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="spatialreward-bench-")) if temporary else args.workdir.resolve()
    try:
        t0 = time.perf_counter()
        info = prepare(workdir, args.sizes)
        print(f"prepared model, images and manifests in {workdir} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
        results = []
        for n in args.sizes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--size", str(n),
                   "--manifest", info["manifests"][n]["path"], "--model", info["model"],
                   "--workdir", str(workdir), "--batch-size", str(args.batch_size)]
            if not args.breakdown:
                cmd.append("--no-breakdown")
            t1 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                print(f"size {n}: child process failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"N={n}: {result['records']} edits in {result['elapsed_s']:.1f} s "
                  f"(process {time.perf_counter() - t1:.1f} s)", file=sys.stderr)
        print_report(results, info, args)
        busy = [r for r in results if r["other_cores"] > 0.1]
        if busy:
            print(f"\nWARNING: other processes used the CPU during the run ("
                  + ", ".join(f"N={r['records']}: {r['other_cores']:.2f} cores" for r in busy)
                  + "); wall-clock figures are inflated. Re-run on a quiet machine.")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "batch_size": args.batch_size,
                                             "manifests": info["manifests"], "results": results}, indent=2))
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif temporary:
            print(f"kept {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
