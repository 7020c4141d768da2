#!/usr/bin/env python
"""Scale of `spatialreward report`: file size, build time and memory, and page
load and sort times in headless Chromium, for a synthetic 10,000-record
results file.

The records are realistic in shape: instructions of 40-160 characters, SC and
PQ reasoning of ~700 and ~400 characters with ``<|bbox_N|>``/``<|global|>``
markers, 0-3 regions, ~12% of manifest lines are best-of-3/4 groups, ~4%
errors (input, model, parse), five categories. Images: scikit-image photos
saved as 1024x768 / 768x1024 / 1024x1024 JPEGs with edits made by code; every
record gets its own edited *path* (a symlink to one of those files) and every
manifest line its own source path, as in a real batch, so each thumbnail is
embedded separately and the file sizes are what a real batch gives.

Each build runs the installed ``spatialreward report`` command in a fresh
process (its peak RSS is its own). Each page is loaded in a fresh headless
Chromium tab three times (medians shown): "load" is the wall time from
``driver.get`` to the first page of rows rendered and painted (the page sets a
flag after the next animation frame), "painted" the page's own
``performance.now()`` at that moment (ms from navigation start), "init" the
script's own time (JSON parse + filter + sort + first render, before layout).
Sorting is a click on the reward header: "sort" is the handler's time (sort
all rows, build the first page), "sort+paint" until that page is painted,
"sort wall" the time seen from Selenium (click round trip included).

    python benchmarks/report_scale.py                        # 10,000 records
    python benchmarks/report_scale.py --records 20000 --images 0 300 2000 10000
    python benchmarks/report_scale.py --workdir /tmp/rbench --keep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = ("add", "remove", "replace", "style", "global")
PHOTOS = (("coffee", (1024, 768)), ("astronaut", (1024, 1024)), ("chelsea", (1024, 768)),
          ("rocket", (768, 1024)), ("retina", (1024, 1024)), ("hubble_deep_field", (1024, 768)))
WORDS = ("the", "cup", "red", "sky", "left", "corner", "bright", "remove", "add", "object", "texture", "edge",
         "shadow", "light", "region", "natural", "blend", "color", "background", "subject", "smooth", "sharp")


def make_images(folder: Path) -> dict[Path, tuple[int, int]]:
    """Photos and code-made edits as JPEG files (a few dozen distinct files)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, size in PHOTOS:
        array = getattr(data, name)()
        image = Image.fromarray(array).convert("RGB")
        w, h = image.size
        target = size[0] / size[1]
        if w / h > target:
            cut = int(h * target)
            image = image.crop(((w - cut) // 2, 0, (w - cut) // 2 + cut, h))
        else:
            cut = int(w / target)
            image = image.crop((0, (h - cut) // 2, w, (h - cut) // 2 + cut))
        image = image.resize(size, Image.Resampling.LANCZOS)
        variants = [image, image.filter(ImageFilter.GaussianBlur(5)), ImageOps.grayscale(image).convert("RGB"),
                    ImageOps.mirror(image)]
        boxed = image.copy()
        ImageDraw.Draw(boxed).rectangle([size[0] // 2, size[1] // 4, size[0] * 3 // 4, size[1] // 2], fill=(200, 30, 30))
        variants.append(boxed)
        for i, variant in enumerate(variants):
            path = folder / f"{name}_{i}.jpg"
            variant.save(path, quality=90)
            files[path] = size
    return files


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_records(n: int, files: dict[Path, tuple[int, int]], links: Path, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    paths = sorted(files)
    links.mkdir(parents=True, exist_ok=True)
    dims = ("success", "overediting", "naturalness", "artifacts")
    records: list[dict] = []
    line = 0
    while len(records) < n:
        line += 1
        base = rng.choice(paths[::5])  # an unedited photo as the source
        source = links / f"src-{line:06d}.jpg"
        if not source.exists():
            source.symlink_to(base)
        instruction = sentence(rng, rng.randint(6, 26))
        category = rng.choice(CATEGORIES)
        candidates = rng.choice((3, 4)) if rng.random() < 0.12 else 1
        candidates = min(candidates, n - len(records))
        group = []
        for c in range(candidates):
            rid = f"edit-{line:06d}" + (f"#{c}" if candidates > 1 else "")
            edited = links / f"out-{len(records) + len(group):06d}.jpg"
            target = rng.choice(paths)
            if not edited.exists():
                edited.symlink_to(target)
            record = {"id": rid, "source": str(source), "edited": str(edited), "instruction": instruction,
                      "meta": {"category": category}, "repaired": False,
                      "config_hash": "0123456789abcdef", "judge_hash": "fedcba9876543210",
                      "model": "SpatialReward/SpatialReward-8B", "version": 1}
            roll = rng.random()
            if roll < 0.04:
                stage = ("input", "model", "parse")[int(roll / 0.04 * 3)]
                message = {"input": f"edited image {edited}: file not found", "model": "CUDA out of memory",
                           "parse": "'score' must be a list of two numbers"}[stage]
                record.update(status="error", error={"stage": stage, "message": message, "origin": f"edits.jsonl:{line}"},
                              reward=None, overall=None, sc=None, pq=None, scores=None, regions=None,
                              reasoning=None, raw=None, edited_size=None)
            else:
                scores = {d: rng.randint(4, 25) for d in dims}
                sc = min(10.0, (0.6 * scores["success"] + 0.4 * scores["overediting"]) / 2.5)
                pq = min(10.0, (0.5 * scores["naturalness"] + 0.5 * scores["artifacts"]) / 2.5)
                overall = sc**0.8 * pq**0.2
                regions = []
                for k in range(rng.choice((0, 1, 1, 2, 3))):
                    x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
                    regions.append({"id": k, "label": sentence(rng, 3)[:-1],
                                    "bbox_2d": [x1, y1, min(1000, x1 + rng.randint(40, 400)), min(1000, y1 + rng.randint(40, 400))]})
                sc_text = " ".join(f"<|bbox_{r['id']}|> " + sentence(rng, 20) for r in regions) + " <|global|> " + sentence(rng, 60)
                pq_text = "<|global|> " + sentence(rng, 60)
                record.update(status="ok", error=None, reward=round(overall / 10, 6), overall=round(overall, 6),
                              sc=round(sc, 6), pq=round(pq, 6), scores=scores, regions=regions,
                              reasoning={"sc": sc_text, "pq": pq_text},
                              raw={"sc": json.dumps({"reasoning": sc_text}), "pq": json.dumps({"reasoning": pq_text})},
                              edited_size=list(files[target]))
            if candidates > 1:
                record.update(group=f"edit-{line:06d}", group_size=candidates, candidate=c, rank=None)
            group.append(record)
        if candidates > 1:
            ok = sorted((r["reward"] for r in group if r["status"] == "ok"), reverse=True)
            for r in group:
                r["rank"] = ok.index(r["reward"]) + 1 if r["status"] == "ok" else None
        records.extend(group)
    return records


def build(scores: Path, out: Path, args: list[str]) -> dict:
    """Run the installed command in a fresh process: wall time and peak RSS."""
    exe = shutil.which("spatialreward", path=str(Path(sys.executable).parent)) or "spatialreward"
    code = ("import resource, subprocess, sys, time, json\n"
            "t = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "wall = time.perf_counter() - t\n"
            "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps({'rc': r.returncode, 'wall': wall, 'rss_kb': rss, 'err': r.stderr[-500:]}))\n")
    result = subprocess.run([sys.executable, "-c", code, exe, "report", str(scores), "-o", str(out), *args],
                            capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    if info["rc"] != 0:
        raise SystemExit(f"report failed: {info['err']}")
    return info


def measure_page(path: Path, repeats: int = 3) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    from spatialreward.testing.browser import HeadlessChromium

    def wait(driver, script, timeout=120):
        WebDriverWait(driver, timeout, poll_frequency=0.005).until(lambda d: d.execute_script(script))

    runs = {k: [] for k in ("load_s", "painted_ms", "init_ms", "sort_ms", "sort_paint_ms", "sort_wall_s")}
    rows = 0
    with HeadlessChromium(width=1440, height=1000, log_console=False) as driver:
        driver.get("about:blank")  # browser start-up is not page load
        for _ in range(repeats):
            driver.get("about:blank")
            t = time.perf_counter()
            driver.get(path.as_uri())  # returns at the load event
            wait(driver, "return !!(window.__report && window.__report.painted)")
            runs["load_s"].append(time.perf_counter() - t)
            info = driver.execute_script("return window.__report")
            runs["painted_ms"].append(info["painted"])
            runs["init_ms"].append(info["initMs"])
            rows = info["rows"]
            header = driver.find_element("css selector", 'th[data-sort="reward"] button')
            t = time.perf_counter()
            header.click()
            wait(driver, "return window.__report.lastSortPaintMs !== null", 60)
            runs["sort_wall_s"].append(time.perf_counter() - t)
            info = driver.execute_script("return window.__report")
            runs["sort_ms"].append(info["lastSortMs"])
            runs["sort_paint_ms"].append(info["lastSortPaintMs"])
    return {"rows": rows, **{k: statistics.median(v) for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--images", type=int, nargs="+", default=[0, 300, 2000, 10_000],
                        help="--images values to build with (300 is the default)")
    parser.add_argument("--limit", type=int, default=1000, help="also build with --limit N (0: skip)")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurements")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        files = make_images(work / "images")
        records = make_records(args.records, files, work / "links")
        scores = work / "scores.jsonl"
        with scores.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        groups = len({r["group"] for r in records if r.get("group")})
        errors = sum(r["status"] == "error" for r in records)
        print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
        print(f"# {len(records)} records ({groups} groups, {errors} errors), scores file "
              f"{scores.stat().st_size / 1e6:.1f} MB, {len(files)} distinct image files "
              f"(inputs built in {time.perf_counter() - t:.1f}s)")
        runs = [(f"--images {n}", ["--images", str(n)]) for n in args.images]
        if args.limit:
            runs.append((f"--limit {args.limit}", ["--limit", str(args.limit)]))
        header = (f"{'flags':<16} {'rows':>6} {'size MB':>8} {'build s':>8} {'peak RSS MB':>11}"
                  + ("" if args.no_browser else f" {'load s':>7} {'painted ms':>10} {'init ms':>8} {'sort ms':>8} {'sort+paint ms':>13} {'sort wall s':>11}"))
        print(header)
        print("-" * len(header))
        for name, flags in runs:
            out = work / f"report{'_'.join(flags)}.html"
            info = build(scores, out, flags + ["-q"])
            line = (f"{name:<16} {'':>6} {out.stat().st_size / 1e6:>8.1f} {info['wall']:>8.1f} "
                    f"{info['rss_kb'] / 1024:>11.0f}")
            if not args.no_browser:
                page = measure_page(out)
                line = (f"{name:<16} {page['rows']:>6} {out.stat().st_size / 1e6:>8.1f} {info['wall']:>8.1f} "
                        f"{info['rss_kb'] / 1024:>11.0f} {page['load_s']:>7.2f} {page['painted_ms']:>10.0f} "
                        f"{page['init_ms']:>8.0f} {page['sort_ms']:>8.0f} {page['sort_paint_ms']:>13.0f} "
                        f"{page['sort_wall_s']:>11.2f}")
            print(line, flush=True)
    finally:
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
