"""Real vLLM servers killed mid-run (SIGKILL): with two servers the run
completes on the survivor; with one, the edits left become `model` error
records (never scores) and `--retry-errors` completes the job once a server
is back. Needs the CPU vLLM venv (tests/vllm_env.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import read_jsonl, spatialreward_exe, write_jsonl
from vllm_env import start_server

pytestmark = pytest.mark.engine  # --full only (tests/conftest.py)


EDITS = 40
FLAGS = ["--structured", "always", "--max-new-tokens", "256", "--concurrency", "4", "-q"]


@pytest.fixture(scope="module")
def many(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("failover")
    edits = ["coffee_red_square", "coffee_gray", "coffee_blur"]
    return write_jsonl(root / "m.jsonl", [
        {"id": f"e{i}", "source": str(photos["coffee"]), "edited": str(photos[edits[i % 3]]),
         "instruction": f"edit number {i}"} for i in range(EDITS)])


def model_errors(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == "error" and r["error"]["stage"] == "model"]


def kill(server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=120)  # a loaded machine can take long to reap a killed vLLM


def answered(server) -> int:
    """Chat requests the server has answered (its access log)."""
    text = server.log.read_text(errors="replace") if server.log.exists() else ""
    return text.count('"POST /v1/chat/completions HTTP/1.1" 200')


def judge_killing(server, manifest, out, urls, model, *extra, after: int = 4):
    """Run judge; SIGKILL ``server`` once it has answered ``after`` requests
    (its own log: the results file is written in input order, so it can stay
    empty behind a slow head until the end). Returns the exit code, stderr and
    how many records were written when the server was killed (None: the run
    ended first)."""
    cmd = [spatialreward_exe(), "judge", str(manifest), "-o", str(out), "--backend", "openai", "--model", str(model),
           *[a for url in urls for a in ("--base-url", url)], *FLAGS, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    killed_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        if killed_at is None and answered(server) >= after:
            killed_at = out.read_bytes().count(b"\n") if out.exists() else 0
            kill(server)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr, killed_at


@pytest.fixture(scope="module")
def second(vllm_python, engine_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("second-server") / "server.log"
    return lambda: start_server(vllm_python, engine_model, log)


def test_two_servers_one_killed_mid_run_completes(vllm_server, second, engine_model, many, tmp_path):
    other = second()
    out = tmp_path / "two.jsonl"
    code, stderr, killed_at = judge_killing(other, many, out, [vllm_server.url, other.url], engine_model)
    assert code == 0, stderr
    assert killed_at is not None and killed_at < EDITS, "the server was killed while edits were left"
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [f"e{i}" for i in range(EDITS)]
    # The random model's grammar-constrained answer is sometimes cut at --max-new-tokens (a parse
    # error, the same on every engine); what matters here: no edit was lost to the killed server.
    assert not model_errors(records), model_errors(records)[:3]
    assert any(r["status"] == "ok" for r in records)


def test_one_server_killed_gives_model_errors_then_retry_errors_completes(vllm_server, second, engine_model, many,
                                                                        tmp_path):
    only = second()
    out = tmp_path / "one.jsonl"
    code, stderr, killed_at = judge_killing(only, many, out, [only.url], engine_model)
    assert code == 0, stderr
    records = read_jsonl(out)
    assert len(records) == EDITS
    errors = model_errors(records)
    assert errors, "edits were left when the only server died"
    assert all(r["reward"] is None and r["scores"] is None for r in errors)
    # A server is back (the session's, serving the same weights): --retry-errors finishes the job.
    proc = subprocess.run([spatialreward_exe(), "judge", str(many), "-o", str(out), "--backend", "openai",
                           "--model", str(engine_model), "--base-url", vllm_server.url, "--retry-errors", *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = read_jsonl(out)
    assert sorted(r["id"] for r in again) == sorted(f"e{i}" for i in range(EDITS))
    assert not model_errors(again)
    assert any(r["status"] == "ok" for r in again)


def test_reward_server_over_the_vllm_server(vllm_server, engine_model, photos, tmp_path):
    """`spatialreward serve --backend openai` in front of the real vLLM server:
    the released client's call shape gets one result per item, in order."""
    from serve_helpers import start
    from spatialreward.client import RewardClient

    server = start(tmp_path, None, "--structured", "always", "--max-new-tokens", "256",
                   model_args=["--backend", "openai", "--base-url", vllm_server.url, "--model", str(engine_model)])
    try:
        with RewardClient(server.url) as client:
            sources = [[photos["coffee"]], [photos["astronaut"]], [photos["coffee"]]]
            edited = [photos["coffee_red_square"], photos["astronaut_mirror"], photos["coffee_blur"]]
            metas = [{"instruction": f"edit {i}", "tag": i} for i in range(3)]
            scores, rewards, reasoning, meta = client.evaluate(sources, edited, metas)
        assert [m["original_index"] for m in meta] == [0, 1, 2] and [m["tag"] for m in meta] == [0, 1, 2]
        assert len(scores) == len(rewards) == len(reasoning) == 3
        for score, reward in zip(scores, rewards):
            # a judged item: a reward in [0, 1]; an item the random model's answer failed: None, never 0.0
            assert (reward is None and score is None) or (0 <= reward <= 1 and score in (0.0, 1.0))
    finally:
        assert server.stop() == 0
