"""Shared fixtures: an isolated Hugging Face environment, a tiny random-weight
Qwen3-VL built offline once per session, and real photos edited by code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"

# huggingface_hub reads these once, at import: set them before anything imports
# it (session fixtures run before the per-test autouse fixture below).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="spatialreward-hf-home-")

# One torch (OpenMP) thread per process unless the caller says otherwise: the suite
# runs a worker per core (pytest-xdist), each starting tiny-model commands, and N
# processes each spinning N threads on N cores burn a quarter to a third more CPU
# for the same answers (two tiny-model judges at once on two cores: 11-12 CPU-s
# with one thread each, 13-17 s with two). Inherited by every command a test
# starts; the Ctrl-C tests give theirs the default threads back (native threads
# at exit are what they check).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# -- the fast default and the full run ------------------------------------------
# `python -m pytest tests` runs the fast default: everything but the tests marked
# `engine` (a real vLLM server or engine) or `browser` (headless Chromium), on
# every core (pytest-xdist, `-n auto` in pyproject.toml). `--full` runs everything,
# as .ci/run does. `-m "not slow"` leaves out the end-to-end runs that load the
# tiny model in a process of their own or start Ray too: the quickest loop.
FULL_ONLY = ("engine", "browser")
# Modules whose module-scoped fixtures run the tiny model (test_cli_e2e's `judged`,
# test_action's `passing`): a fixture runs once per worker that runs its tests,
# so each module stays on one worker and its runs happen once.
SHARED_RUNS = ("test_cli_e2e.py", "test_action.py")


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the engine and browser tests (what .ci/run runs)")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and config.getvalue("dist") == "loadgroup":
        config.pluginmanager.register(_GroupsTook(), "spatialreward-groups-took")  # the controller's
    for marker, what in (("engine", "needs the CPU vLLM environment (a real vLLM server or engine): --full only"),
                         ("browser", "drives headless Chromium: --full only"),
                         ("slow", "installs a tool, starts Ray or loads the tiny model in processes of its own")):
        config.addinivalue_line("markers", f"{marker}: {what}")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("engine"):
            item.add_marker(pytest.mark.xdist_group("vllm"))  # one worker, one CPU vLLM server
        elif "local_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))  # one worker, one local Ray (tests/test_ray.py)
        elif item.path.name in SHARED_RUNS:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))  # its module fixtures' runs, once
    if config.getoption("--full"):
        return
    kept, skipped = [], []
    for item in items:
        (skipped if any(item.get_closest_marker(m) for m in FULL_ONLY) else kept).append(item)
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = kept


class _GroupsTook:
    """Under --dist loadgroup each worker tags a grouped test's id with its
    group, and the scheduler reads the tags. On a pytest where the tag does not
    stick, every group would be spread over the workers (two vLLM servers, two
    Rays, module fixtures run twice) without a word: stop and say it."""

    def pytest_xdist_node_collection_finished(self, node, ids):
        grouped = [i for i in ids if i.split("::")[0].rsplit("/", 1)[-1] in SHARED_RUNS]
        if grouped and not any("@" in i for i in grouped):
            pytest.exit(f"pytest-xdist's --dist loadgroup does not group on this pytest ({grouped[0]} carries no "
                        "@group tag): pip install 'pytest<9.2' (pytest-xdist#1386), or run with -n 0", returncode=4)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No hub access and no shared caches: every test sees an empty HF_HOME."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("SPATIALREWARD_DEBUG", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight Qwen3-VL (2 text layers, 2 vision blocks) with a
    byte-level tokenizer and the real Qwen3-VL processor, saved to disk."""
    from spatialreward.testing.random_model import build

    return build(tmp_path_factory.mktemp("tiny-qwen3-vl"))


def _photo(name: str):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos (scikit-image's bundled data) and edits made by code.

    landscape: coffee (600x400); portrait: a crop of astronaut (300x512).
    """
    from PIL import ImageDraw, ImageFilter, ImageOps

    root = tmp_path_factory.mktemp("photos")
    coffee = _photo("coffee")
    astronaut = _photo("astronaut").crop((100, 0, 400, 512))
    out = {}

    def save(name, image):
        path = root / name
        image.save(path)
        out[path.stem] = path

    save("coffee.png", coffee)
    red = coffee.copy()
    ImageDraw.Draw(red).rectangle([380, 120, 520, 260], fill=(220, 20, 20))
    save("coffee_red_square.png", red)
    save("coffee_gray.jpg", ImageOps.grayscale(coffee).convert("RGB"))
    save("coffee_blur.png", coffee.filter(ImageFilter.GaussianBlur(6)))
    save("astronaut.png", astronaut)
    save("astronaut_mirror.png", ImageOps.mirror(astronaut))
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def spatialreward_exe() -> str:
    """The installed console script (the test venv's), as a user would run it."""
    exe = shutil.which("spatialreward", path=str(Path(sys.executable).parent)) or shutil.which("spatialreward")
    assert exe, "the spatialreward command is not installed (pip install .)"
    return exe


def run_cli(*args, input: str | None = None, cwd=None, timeout: int = 600, env: dict | None = None):
    """Run the installed ``spatialreward`` command; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [spatialreward_exe(), *map(str, args)],
        input=input, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env,
    )


def default_sigint() -> None:
    """For a command a test interrupts (``preexec_fn``): Ctrl-C as a terminal
    delivers it, also when pytest runs in the background of a script, whose
    children start with SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Generation flags that keep the tiny model fast on a CPU.
FAST = ["--max-new-tokens", "160", "--device", "cpu"]


# -- engines: a real vLLM OpenAI server on the CPU (tests/vllm_env.py) --------


@pytest.fixture(scope="session")
def engine_model(tmp_path_factory) -> Path:
    """The tiny random Qwen3-VL with head_dim 64, which vLLM's CPU attention takes."""
    from spatialreward.testing.random_model import build

    return build(tmp_path_factory.mktemp("engine-qwen3-vl"), preset="engine")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The CPU vLLM venv's python (skipped without it; CI fails instead)."""
    from vllm_env import vllm_python as find

    return find()


@pytest.fixture(scope="session")
def vllm_server(vllm_python, engine_model, tmp_path_factory):
    """One vLLM OpenAI server for the session, on a free 127.0.0.1 port, with
    the published pixel budget; stopped at the end."""
    from vllm_env import start_server, stop_server

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    try:
        server = start_server(vllm_python, engine_model, log)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    stop_server(server)
