"""Edits/s of the in-process backends on a GPU, with a random-weight model of
Qwen3-VL-8B's real shapes: transformers at several batch sizes, and vLLM.

    python benchmarks/gpu_throughput.py                          # builds the model in a temp folder (~16 GB)
    python benchmarks/gpu_throughput.py --model /tmp/rand8b      # built there on first use, reused after
    python benchmarks/gpu_throughput.py --backends transformers --batch-sizes 8 16
    python benchmarks/gpu_throughput.py --smoke                  # CPU, tiny model, ~1 min: checks the code path
    python benchmarks/gpu_throughput.py --vllm-option enforce_eager=true   # skip vLLM's compile and CUDA graphs

Not yet run on a GPU. Expected cost on one H200 (an estimate): building the 8B
model ~1-2 min (random init on the GPU, 16 GB written), transformers ~3 min,
vLLM 2-4 min (load, compile, CUDA graphs), so ~8 min; pass ``--model DIR`` to
build once and reuse.

What it runs: ``Judge.from_pretrained(model, backend=B, batch_size=N,
generation={"max_new_tokens": 256, "structured": "off", "temperature": 0})``
(greedy, unconstrained) then ``list(judge.score_many(samples))``, the public
API, over edits of 768x768 PNG images (a source and edited variants, decoded
by the judge as in a real run; at the published pixel budget each image is 576
tokens). Each edit is two requests (SC and PQ).

Full-length answers: the model's chat stop tokens (``<|im_end|>``,
``<|endoftext|>``) get all-zero rows in ``lm_head``, so their logit is exactly 0
while the largest of the other random logits is positive: greedy decoding never
stops early and every answer runs the full ``--max-new-tokens`` in both
backends (the judge offers no min_new_tokens / ignore_eos). The rows are
patched in the checkpoint this script builds (in place, a few bytes of the
safetensors file); a ``--model`` folder it did not build is used as it is, and
answer lengths then vary: the table's tokens/request column says what was
generated (counted from the backend's answers).

Per backend, one fresh process (so each gets the whole GPU). transformers: one
load, then per batch size an untimed warm-up (one ``generate`` call) and a timed
run of ``--calls`` calls of that batch size. vLLM (in process,
``backend="vllm"``): one load, an untimed warm-up, then ``--vllm-edits`` edits
(vLLM batches them itself, up to the backend's per-call limit).

Printed per row: edits/s, generated tokens/s, mean tokens per request, and GPU
memory: torch's peak allocated in the judge's process (transformers; vLLM's
engine runs in its own process) and the device's peak used memory (sampled with
NVML or nvidia-smi every 0.2 s; vLLM reserves ``gpu_memory_utilization`` of the
device up front). All answers of a random model fail parsing: the results are
``parse``-stage errors by design; ``model``-stage errors are failures and are
reported.

``--smoke``: the same code path on the CPU with the tiny test model
(``python -m spatialreward.testing.random_model``), 64x64 images, 16-token
answers, batch sizes 2 and 4, a handful of edits; vLLM is skipped when it is not
installed (it needs a GPU anyway).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCH = HERE.parent.parent / "shared" / "reference" / "qwen3_vl_8b_architecture.json"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
MARKER = "stop_rows_zeroed.json"  # written next to the weights when the stop rows are patched
SAFETENSORS_SIZES = {"F32": 4, "BF16": 2, "F16": 2}


# -- the model -------------------------------------------------------------------------
def build_model(out: Path, *, smoke: bool, dtype: str) -> None:
    """A random-weight Qwen3-VL in ``out``: the tiny test model (smoke) or the real 8B shapes."""
    from spatialreward.testing import random_model

    if smoke:
        random_model.build(out)
        return
    arch = json.loads(ARCH.read_text())
    started = time.perf_counter()
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no GPU")
        with torch.device("cuda"):  # random init on the GPU: seconds, not minutes
            random_model.build(out, arch=arch, dtype=dtype)
        torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - e.g. no GPU: the CPU takes longer and ~3x the model's size in RAM
        print(f"building on the GPU failed ({exc.__class__.__name__}: {exc}); building on the CPU", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        random_model.build(out, arch=arch, dtype=dtype)
    print(f"built {out} in {time.perf_counter() - started:.0f} s", flush=True)


def zero_stop_rows(model_dir: Path) -> list[int]:
    """Zero the ``lm_head`` rows of the stop tokens, in place in the safetensors file
    (the header gives the tensor's byte range; nothing else is read or rewritten)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = sorted({tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS})
    index = model_dir / "model.safetensors.index.json"
    name = json.loads(index.read_text())["weight_map"]["lm_head.weight"] if index.exists() else "model.safetensors"
    with open(model_dir / name, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(size))["lm_head.weight"]
        rows, cols = entry["shape"]
        item = SAFETENSORS_SIZES[entry["dtype"]]
        begin = 8 + size + entry["data_offsets"][0]
        for i in ids:
            if not 0 <= i < rows:
                raise SystemExit(f"stop token id {i} outside lm_head ({rows} rows)")
            f.seek(begin + i * cols * item)
            f.write(bytes(cols * item))
    (model_dir / MARKER).write_text(json.dumps({"lm_head rows zeroed": ids, "tokens": STOP_TOKENS}))
    return ids


def make_images(folder: Path, side: int, distinct: int = 8) -> tuple[Path, list[Path]]:
    """A source and ``distinct`` edited variants, smooth pictures with shapes (PNG)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    source = Image.fromarray((255 * base).astype(np.uint8))
    src = folder / "source.png"
    source.save(src)
    edited = []
    for i in range(distinct):
        image = source.copy()
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, side * 3 // 4, 2)
            w, h = rng.integers(side // 10, side // 4, 2)
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"edited{i}.png"
        image.save(path)
        edited.append(path)
    return src, edited


# -- GPU memory ------------------------------------------------------------------------
class DeviceMemory:
    """Peak device memory used (MiB), sampled every 0.2 s with NVML or nvidia-smi; None without either."""

    def __init__(self):
        self.peak = None
        self._stop = threading.Event()
        self._read = self._reader()
        self._thread = None

    @staticmethod
    def _reader():
        index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0] or 0)
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        except Exception:  # noqa: BLE001 - no NVML bindings: nvidia-smi, if there
            pass
        if shutil.which("nvidia-smi"):
            def smi():
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", str(index)], capture_output=True, text=True, timeout=10).stdout
                return float(out.strip().splitlines()[0])
            try:
                smi()
                return smi
            except Exception:  # noqa: BLE001
                pass
        return None

    def __enter__(self):
        if self._read is not None:
            self.peak = 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while True:
            try:
                self.peak = max(self.peak, self._read())
            except Exception:  # noqa: BLE001
                pass
            if self._stop.wait(0.2):
                return

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


# -- one backend, in its own process ---------------------------------------------------
class TokenCounter:
    """Wraps ``judge.backend.generate`` to count the requests and generated tokens it answers."""

    def __init__(self, judge):
        self.requests = self.tokens = 0
        self.lengths: set[int] = set()
        self._lock = threading.Lock()
        backend = getattr(judge, "backend", None)
        self.ok = backend is not None and callable(getattr(backend, "generate", None))
        if not self.ok or getattr(backend.generate, "_counted", False):
            return
        original = backend.generate

        def generate(requests, *args, **kwargs):
            answers = original(requests, *args, **kwargs)
            with self._lock:
                for answer in answers:
                    tokens = getattr(answer, "tokens", None)
                    if tokens is not None:
                        self.requests += 1
                        self.tokens += tokens
                        self.lengths.add(tokens)
            return answers

        generate._counted = True
        generate._counter = self
        backend.generate = generate

    @staticmethod
    def of(judge) -> "TokenCounter":
        existing = getattr(getattr(getattr(judge, "backend", None), "generate", None), "_counter", None)
        return existing or TokenCounter(judge)

    def reset(self):
        with self._lock:
            self.requests = self.tokens = 0
            self.lengths = set()


def samples_for(src: Path, edited: list[Path], count: int, tag: str):
    from spatialreward import Sample

    return [Sample(id=f"{tag}-{i}", source=str(src), edited=str(edited[i % len(edited)]),
                   instruction=f"Add a red box to the picture, edit {i}") for i in range(count)]


def timed(judge, samples, counter: TokenCounter, torch_cuda: bool) -> dict:
    import resource

    if torch_cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    counter.reset()
    with DeviceMemory() as device:
        started = time.perf_counter()
        results = list(judge.score_many(samples))
        seconds = time.perf_counter() - started
    stages: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            stage = getattr(r.error, "stage", r.error.__class__.__name__)
            stages[stage] = stages.get(stage, 0) + 1
    first_model_error = next((str(r.error) for r in results
                              if r.error is not None and getattr(r.error, "stage", "") != "parse"), None)
    row = {
        "edits": len(results), "seconds": seconds, "edits_per_s": len(results) / seconds,
        "requests": counter.requests if counter.ok else 2 * len(results),
        "tokens": counter.tokens if counter.ok else None,
        "tokens_per_s": counter.tokens / seconds if counter.ok else None,
        "mean_tokens": counter.tokens / counter.requests if counter.ok and counter.requests else None,
        "lengths": sorted(counter.lengths)[:5] if counter.ok else None,
        "error_stages": stages, "first_model_error": first_model_error,
        "device_peak_mib": device.peak,
        "torch_peak_mib": (torch.cuda.max_memory_allocated() / 2**20) if torch_cuda else None,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return row


def worker(args) -> None:
    """One backend: load once, then each configuration; one ``RESULT {json}`` line per row."""
    from spatialreward import Judge

    generation = {"max_new_tokens": args.max_new_tokens, "structured": "off", "temperature": 0.0}
    src = Path(args.images) / "source.png"
    edited = sorted(Path(args.images).glob("edited*.png"))
    device = "cpu" if args.smoke else "cuda"
    torch_cuda = False
    if args.worker == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            print("RESULT " + json.dumps({"backend": "vllm", "skipped": f"vLLM is not installed ({exc})"}), flush=True)
            return
        options = {"gpu_memory_utilization": args.gpu_memory_utilization}
        for item in args.vllm_option:
            key, _, value = item.partition("=")
            try:
                options[key] = json.loads(value)  # numbers, true/false, lists
            except ValueError:
                options[key] = value
        started = time.perf_counter()
        judge = Judge.from_pretrained(args.model, backend="vllm", backend_options=options, generation=generation)
        load_s = time.perf_counter() - started
        counter = TokenCounter.of(judge)
        list(judge.score_many(samples_for(src, edited, args.warmup_edits, "warm")))
        row = timed(judge, samples_for(src, edited, args.vllm_edits, "run"), counter, False)
        row.update(backend="vllm", batch=f"<= {getattr(judge, 'max_batch', '?')}", load_s=load_s)
        print("RESULT " + json.dumps(row), flush=True)
        judge.close()
        return

    import torch

    torch_cuda = device == "cuda" and torch.cuda.is_available()
    dtype = "float32" if args.smoke else "bfloat16"
    base = None
    for batch in args.batch_sizes:
        started = time.perf_counter()
        judge = None
        if base is not None:
            try:  # the loaded model again, at another batch size (no second load)
                from dataclasses import replace

                judge = Judge(base.backend, replace(base.config, batch_size=batch))
            except Exception as exc:  # noqa: BLE001 - a core without Judge(backend, config): load again
                print(f"  (Judge(backend, config) failed: {exc.__class__.__name__}: {exc}; loading again)", flush=True)
                base.close()
                base = None
        if judge is None:
            if base is not None:
                base.close()
            judge = base = Judge.from_pretrained(args.model, backend="transformers", device=device, dtype=dtype,
                                                 batch_size=batch, generation=generation)
        load_s = time.perf_counter() - started
        counter = TokenCounter.of(judge)
        list(judge.score_many(samples_for(src, edited, max(1, batch // 2), f"warm{batch}")))  # one generate call
        edits = max(1, args.calls * batch // 2)
        row = timed(judge, samples_for(src, edited, edits, f"run{batch}"), counter, torch_cuda)
        row.update(backend="transformers", batch=batch, load_s=load_s)
        print("RESULT " + json.dumps(row), flush=True)
        if judge is not base:
            judge.close()
    if base is not None:
        base.close()


def run_worker(args, backend: str, model: Path, images: Path) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", backend, "--model", str(model),
           "--images", str(images), "--max-new-tokens", str(args.max_new_tokens), "--calls", str(args.calls),
           "--vllm-edits", str(args.vllm_edits), "--warmup-edits", str(args.warmup_edits),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--batch-sizes", *map(str, args.batch_sizes)]
    for item in args.vllm_option:
        cmd += ["--vllm-option", item]
    if args.smoke:
        cmd.append("--smoke")
    rows = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("RESULT "):
            row = json.loads(line[7:])
            rows.append(row)
            if "skipped" in row:
                print(f"  {backend}: skipped ({row['skipped']})", flush=True)
            else:
                print(f"  {backend} batch {row['batch']}: {row['edits']} edits in {row['seconds']:.1f} s, "
                      f"{row['edits_per_s']:.2f} edits/s, error stages {row['error_stages']}", flush=True)
        else:
            print("  " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        rows.append({"backend": backend, "skipped": f"worker failed (exit {proc.returncode}): see its output above"})
        print(f"  {backend}: worker failed (exit {proc.returncode})", flush=True)
    return rows


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the model folder: used as it is when it exists, else built there "
                                        "(random weights, real 8B shapes; ~16 GB) and kept; default: a temp folder")
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="transformers batch sizes (default 4 8 16 32)")
    parser.add_argument("--calls", type=int, default=4, help="timed generate() calls per transformers batch size (default 4)")
    parser.add_argument("--vllm-edits", type=int, default=None, help="timed edits for vLLM (default 256)")
    parser.add_argument("--warmup-edits", type=int, default=None, help="untimed vLLM warm-up edits (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default 256)")
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 768)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="weights of the built model")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM's share of the GPU (default 0.9)")
    parser.add_argument("--vllm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="another vllm backend option, e.g. enforce_eager=true (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 64x64 images, 16 tokens, batch sizes 2 4")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", choices=["transformers", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.batch_sizes = args.batch_sizes or ([2, 4] if smoke else [4, 8, 16, 32])
    args.vllm_edits = args.vllm_edits or (4 if smoke else 256)
    args.warmup_edits = args.warmup_edits or (1 if smoke else 8)
    args.max_new_tokens = args.max_new_tokens or (16 if smoke else 256)
    args.image_size = args.image_size or (64 if smoke else 768)
    if args.worker:
        return worker(args)

    import platform

    import spatialreward
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"spatialreward: {Path(spatialreward.__file__).resolve()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {gpu}, {os.cpu_count()} CPUs")
    if not smoke and not torch.cuda.is_available():
        print("no GPU here: this benchmark needs one (use --smoke to check the code path on the CPU)")
    with tempfile.TemporaryDirectory(prefix="spatialreward-gpu-bench-") as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else folder / "model"
        built = not model.exists()
        if built:
            build_model(model, smoke=smoke, dtype=args.dtype)
            print(f"stop-token rows of lm_head zeroed: ids {zero_stop_rows(model)}", flush=True)
        forced = (model / MARKER).exists()
        if not forced:
            print(f"{model}: not built by this script, stop tokens not suppressed: answer lengths vary (see tokens/request)")
        images = folder / "images"
        images.mkdir()
        make_images(images, args.image_size)
        print(f"model {model}; {args.image_size}x{args.image_size} images; {args.max_new_tokens}-token answers "
              f"({'forced to full length' if forced else 'not forced'}), greedy, unconstrained", flush=True)
        rows = []
        for backend in args.backends:
            rows += run_worker(args, backend, model, images)

    print()
    print("| backend | batch | edits | edits/s | tokens/s | tokens/request | torch peak GiB | device peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['backend']} | - | - | - | - | - | - | - |  ({r['skipped']})")
            continue
        gib = (lambda m: None if m is None else m / 1024)
        print(f"| {r['backend']} | {r['batch']} | {r['edits']} | {r['edits_per_s']:.2f} | {fmt(r['tokens_per_s'], '.0f')} "
              f"| {fmt(r['mean_tokens'], '.1f')} | {fmt(gib(r['torch_peak_mib']), '.1f')} "
              f"| {fmt(gib(r['device_peak_mib']), '.1f')} |")
        if r.get("first_model_error"):
            print(f"    model-stage errors: {r['error_stages']}; first: {r['first_model_error'][:200]}")
    full = [r for r in rows if "skipped" not in r and r["mean_tokens"] is not None]
    if forced and any(r["lengths"] != [args.max_new_tokens] for r in full):
        print(f"WARNING: some answers were not {args.max_new_tokens} tokens long: {[r['lengths'] for r in full]}")
    if smoke:
        peaks = ", ".join(f"{r['rss_peak_mib']:.0f}" for r in full)
        print(f"smoke: peak RSS of the worker after each row: {peaks} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    if not full or any(r.get("first_model_error") for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
