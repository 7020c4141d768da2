"""Where the weights come from, decided in seconds: a missing folder, a hub
that cannot be reached, a model already in the cache (no network touched)."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from conftest import run_cli, write_jsonl


@pytest.fixture()
def manifest(photos, tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": "Blur"}])


def judge_timed(manifest, tmp_path, *args, env=None):
    started = time.monotonic()
    proc = run_cli("judge", manifest, "-o", tmp_path / "x.jsonl", "--device", "cpu", *args, env=env)
    return proc, time.monotonic() - started


def test_missing_local_folder_says_so(manifest, tmp_path):
    for model in (str(tmp_path / "no" / "such" / "model"), "./not-here", "~/nowhere/at/all"):
        proc, _ = judge_timed(manifest, tmp_path, "--model", model)
        assert proc.returncode == 3
        assert f"model folder {model!r} does not exist" in proc.stderr, proc.stderr
        assert "Repo id must be" not in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_hub_fails_within_seconds(manifest, tmp_path):
    """Connection refused: one line, no retry noise, in seconds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    proc, seconds = judge_timed(manifest, tmp_path, env=env)
    assert proc.returncode == 3
    assert seconds < 30
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "loading" not in line.lower()]
    assert len(lines) == 1, proc.stderr
    assert "is not in the local Hugging Face cache" in lines[0] and "hf download SpatialReward/SpatialReward-8B" in lines[0]


@pytest.mark.slow  # waits for a timeout (-m "not slow" leaves it out)
def test_silent_hub_times_out_within_seconds(manifest, tmp_path):
    """A hub that accepts the connection but never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def hold():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
        proc, seconds = judge_timed(manifest, tmp_path, env=env)
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert proc.returncode == 3 and seconds < 40, (seconds, proc.stderr)
    assert "could not be fetched" in proc.stderr and proc.stderr.count("\n") <= 3


def test_offline_missing_model_is_immediate(manifest, tmp_path):
    proc, seconds = judge_timed(manifest, tmp_path)  # HF_HUB_OFFLINE=1 from conftest
    assert proc.returncode == 3 and seconds < 30
    assert "HF_HUB_OFFLINE is set" in proc.stderr


def test_cached_hub_model_loads_without_network(manifest, tiny_model, tmp_path):
    """A hub id already in the cache loads with no network at all, even when
    the hub is unreachable and offline mode is off."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    snapshot = home / "hub" / "models--SpatialReward--SpatialReward-8B" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model, snapshot)
    refs = home / "hub" / "models--SpatialReward--SpatialReward-8B" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0" * 40)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc, _ = judge_timed(manifest, tmp_path, "--max-new-tokens", "8", "--structured", "off", env=env)
    assert proc.returncode == 0, proc.stderr
    assert constants  # the cache layout above is huggingface_hub's
