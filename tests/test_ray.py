"""Judging on Ray Data (spatialreward.ray, `judge --ray`): the same records as
`judge --backend openai`, byte for byte; bad inputs and engine failures as
error records; a driver killed mid-run resumes with every edit exactly once.

One local Ray for the module (2 CPUs) against tests/fake_openai.py's server;
one test against the CPU vLLM server of the engine tests (skipped without its
venv)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'spatialreward[ray]')")
pytest.importorskip("ray.data.llm", reason="ray.data.llm is not available in this Ray")
pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install 'spatialreward[ray]')")

from PIL import Image  # noqa: E402

from conftest import run_cli, spatialreward_exe, write_jsonl  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

SERVED = ["--served-model", "served-model"]


class GarblingFake(FakeOpenAI):
    """Answers an unconstrained request whose text asks to "Garble" with free
    text that does not parse (the constrained repair then answers JSON)."""

    def _answer(self, handler, body, fault):
        text = body["messages"][0]["content"][-1].get("text", "")
        if not fault and "Garble" in text and "structured_outputs" not in body:
            self._send(handler, 200, {
                "id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "I think it is fine."},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 6, "total_tokens": 56}})
            return
        super()._answer(handler, body, fault)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def fake():
    server = GarblingFake().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-manifest")
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "a.png")
    Image.new("RGB", (64, 48), (10, 200, 10)).save(root / "b.png")
    Image.new("RGBA", (48, 64), (10, 10, 200, 128)).save(root / "c.png")
    (root / "bad.png").write_bytes(b"not an image")
    return write_jsonl(root / "m.jsonl", [
        {"id": "e1", "source": "a.png", "edited": "b.png", "instruction": "Make it green", "category": "colour"},
        {"id": "e2", "source": "a.png", "edited": "bad.png", "instruction": "Break it"},
        {"id": "g", "source": "a.png", "edited": ["b.png", "c.png"], "instruction": "Recolour"},
        {"id": "rep", "source": "a.png", "edited": "c.png", "instruction": "Garble the square"},
        {"source": ["a.png", "c.png"], "edited": "b.png", "instruction": "Merge the two"},  # 3 images: refused (400)
        {"id": "e1", "source": "a.png", "edited": "c.png", "instruction": "a duplicate id"},
        {"id": 7, "edited": "c.png", "instruction": "no source"},
        *({"id": f"k{n}", "source": "a.png", "edited": "b.png", "instruction": f"Edit {n:02d} of twelve"} for n in range(12)),
    ])


@pytest.fixture(scope="module")
def reference(fake, manifest, tmp_path_factory) -> list[str]:
    """The single-process `judge --backend openai` records, as lines."""
    out = tmp_path_factory.mktemp("ref") / "s.jsonl"
    proc = run_cli("judge", manifest, "-o", out, "--backend", "openai", "--base-url", fake.url, *SERVED, "-q")
    assert proc.returncode == 0, proc.stderr
    return out.read_text(encoding="utf-8").splitlines()


@pytest.mark.slow  # a local Ray instance and Ray Data pipelines
def test_cli_ray_killed_and_resumed_writes_the_same_records_byte_for_byte(local_ray, fake, manifest, reference,
                                                                          tmp_path):
    """A driver killed (-9) once a shard is written, then the same command: every
    edit exactly once, the shards' edits not judged again, and the results file
    equal to the single-process run's byte for byte (repairs, bad images, engine
    refusals, groups); then a resume with nothing left, and --retry-errors."""
    out = tmp_path / "s.jsonl"
    args = [spatialreward_exe(), "judge", str(manifest), "-o", str(out), "--backend", "openai", "--base-url",
            fake.url, *SERVED, "--ray", "--ray-address", local_ray, "--replicas", "1"]
    fake.delay_s = 0.15
    try:
        driver = subprocess.Popen([*args, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        shards = tmp_path / "s.jsonl.ray"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if shards.is_dir() and any(shards.glob("shard-*.jsonl")):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the run finished before any shard was seen: " + driver.stderr.read().decode()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        fake.delay_s = 0.0
    sent = len(fake.chat_requests())
    in_shards = {json.loads(line)["instruction"] for shard in shards.glob("shard-*.jsonl")
                 for line in shard.read_text(encoding="utf-8").splitlines()}
    assert in_shards

    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8").splitlines() == reference
    judged = re.findall(r"ray: (\d+)/(\d+) edits judged", proc.stderr)
    assert judged and judged[-1][0] == judged[-1][1] and 0 < int(judged[-1][0]) < 20, proc.stderr  # the rest only
    asked = [body["messages"][0]["content"][-1].get("text", "") for body in fake.chat_requests()[sent:]]
    assert not [i for i in in_shards if any(i in text for text in asked)]  # the shards' edits not judged again
    assert not shards.exists()  # merged and cleaned up
    records = {r["id"]: r for r in map(json.loads, reference)}
    assert records["rep"]["status"] == "ok" and records["rep"]["repaired"]  # the repair path ran
    assert records["e2"]["error"]["stage"] == "input"  # a bad image
    derived = next(r for r in records.values() if r["id"].startswith("e-"))
    assert "refused the request" in derived["error"]["message"]  # an engine failure, in the judge's own words
    assert [records[f"g#{k}"]["rank"] for k in (0, 1)] == [1, 1]

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed: 20 edits already" in again.stderr
    assert out.read_text(encoding="utf-8").splitlines() == reference

    retried = subprocess.run([*args, "--retry-errors", "-q"], capture_output=True, text=True, timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == sorted(reference)


@pytest.mark.slow  # a local Ray instance and Ray Data pipelines
def test_judge_dataset_gives_the_same_records(local_ray, fake, manifest, reference):
    from spatialreward.ray import judge_dataset

    rows = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        entry = json.loads(line)
        if entry.get("instruction") == "a duplicate id":
            continue  # judge_dataset leaves duplicate ids to its caller (the CLI flags them)
        if entry.get("id") == "rep":  # images as bytes work too
            entry["edited"] = (manifest.parent / "c.png").read_bytes()
        rows.append({**entry, "_origin": f"{manifest}:{number}", "_seq": number})
    ds = ray.data.from_items(rows)
    out = judge_dataset(ds, base_urls=[fake.url], manifest_base=manifest.parent,
                        backend_options={"served_model": "served-model"}, concurrency=2)
    got = {row["id"]: json.loads(row["record"]) for row in out.take_all()}
    want = {r["id"]: r for r in map(json.loads, reference) if r["id"] != "e1@6"}
    assert set(got) == set(want)
    assert got["rep"]["edited"] == "<bytes>"
    got["rep"]["edited"] = want["rep"]["edited"]
    for record in (got["g#0"], got["g#1"]):
        record["rank"] = 1  # ranking a group is the merge's (records.rank_group)
    assert got == want


@pytest.mark.slow  # a local Ray instance
def test_ray_vllm_replicas_say_a_missing_model_in_one_line(local_ray, manifest, tmp_path):
    """The weights are looked for on a replica's node (a Ray task; a cluster's
    head need not hold them): a missing folder is the judge's own one line and
    exit code, not a Ray traceback; nothing is written."""
    missing = tmp_path / "no-such-model"
    proc = run_cli("judge", manifest, "-o", tmp_path / "out.jsonl", "--ray", "--ray-address", local_ray,
                   "--backend", "vllm", "--model", missing, "-q")
    direct = run_cli("judge", manifest, "-o", tmp_path / "direct.jsonl", "--model", missing, "-q")
    assert direct.returncode != 0 and proc.returncode == direct.returncode, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert error == [line for line in direct.stderr.splitlines() if line.startswith("Error:")], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.ray").exists()


# A driver whose Ray stage raises (as a replica that cannot start would): run by the next test.
FAILING_RUN = r"""
import pathlib, sys

import spatialreward.ray as sray
from spatialreward.config import Aggregation, Generation


def broken(ds, spec):
    def boom(row):
        raise ValueError("the replica cannot start: out of GPU memory")
    return ds.map(boom)


sray.judge_rows = broken
spec = sray.RaySpec(urls=("http://127.0.0.1:9/v1",), served_model="m", model="m", judge_hash="j",
                    config_hash="c", generation=Generation(), aggregation=Aggregation(), protocol="eval")
try:
    sray._judge_into_shards([{"_seq": [0, 0], "_sample": "{}"}], spec, pathlib.Path(sys.argv[1]), sys.argv[2], None)
except sray.EngineError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.slow  # a driver of its own on the local Ray
def test_a_stage_that_cannot_go_on_is_one_line_and_the_run_resumable(local_ray, tmp_path):
    """A stage that raises (a replica that cannot start, a worker's bug) stops
    the run with one line naming the worker's exception and saying how to
    resume; Ray Data's own error and traceback lines stay off the console
    (they are in Ray's logs)."""
    script = tmp_path / "failing_run.py"
    script.write_text(FAILING_RUN)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), local_ray], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("the Ray run stopped after 0 of 1 edits: ValueError: the replica cannot start: "
                                "out of GPU memory; the records written so far are kept: run the same command "
                                "again to resume"), proc.stderr
    noise = [line for line in lines[:-1] if "ERROR" in line or "Traceback" in line or "execution failed" in line]
    assert not noise, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--backend", "transformers"], "--ray judges through OpenAI-compatible servers"),
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"], "--ray needs -o FILE"),
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "-o", "x.jsonl", "--concurrency", "4"],
     "--concurrency does not apply to --ray"),
])
def test_ray_usage_errors(manifest, args, message):
    proc = run_cli("judge", manifest, "--ray", *args, "-q")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_replicas_without_ray_is_a_usage_error(manifest):
    proc = run_cli("judge", manifest, "--replicas", "2", "-q")
    assert proc.returncode == 2 and "--replicas applies only with --ray" in proc.stderr


def test_ray_with_an_in_process_engine_is_a_usage_error(manifest, tmp_path):
    """--ray judges through OpenAI-compatible servers or vLLM replicas it
    places; the transformers backend, and --device with vllm (Ray gives each
    replica its GPUs), are usage errors before anything starts."""
    proc = run_cli("judge", manifest, "-o", tmp_path / "out.jsonl", "--ray", "--backend", "transformers", "-q")
    assert proc.returncode == 2, proc.stderr
    assert ("--ray judges through OpenAI-compatible servers (--backend openai --base-url URL) or vLLM replicas it "
            "places (--backend vllm), not --backend transformers") in proc.stderr
    proc = run_cli("judge", manifest, "-o", tmp_path / "out.jsonl", "--ray", "--backend", "vllm", "--device", "cpu")
    assert proc.returncode == 2 and "--device does not apply to --ray --backend vllm" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_ray_vllm_replicas_without_vllm_say_how_to_install(manifest, tmp_path):
    """Here vLLM is not installed (the engine tests run the replicas in the CPU
    vLLM venv): one line, exit 3, before Ray starts; nothing written."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    proc = run_cli("judge", manifest, "-o", tmp_path / "out.jsonl", "--ray", "--backend", "vllm", "-q")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == ("Error: --ray --backend vllm needs vLLM where the replicas run (here, with a local "
                                   "Ray): pip install 'spatialreward[vllm,ray]'")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.ray").exists()


@pytest.mark.engine
def test_ray_through_a_real_vllm_server(local_ray, vllm_server, engine_model, photos, tmp_path):
    """The CPU vLLM server of the engine tests: `judge --ray` writes what
    `judge --backend openai` writes (--structured auto: repairs included)."""
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": str(photos["coffee"]), "edited": str(photos["astronaut"]), "instruction": "Swap"},
        {"id": "b", "source": str(photos["astronaut"]), "edited": str(photos["coffee"]), "instruction": "Back"},
    ])
    flags = ["--backend", "openai", "--base-url", vllm_server.url, "--model", engine_model,
             "--max-new-tokens", "96", "-q"]
    single, distributed = tmp_path / "single.jsonl", tmp_path / "ray.jsonl"
    proc = run_cli("judge", m, "-o", single, *flags)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("judge", m, "-o", distributed, *flags, "--ray", "--ray-address", local_ray)
    assert proc.returncode == 0, proc.stderr
    assert distributed.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
