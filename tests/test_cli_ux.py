"""What a new user and a hostile input found (issue 8), through the installed
command in real processes: `check` refuses bad inputs before loading a model,
Ctrl-C, progress when stderr is not a terminal, data on stdout and messages on
stderr. The scripted backend stands in for the model (no model at all)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, spatialreward_exe, write_jsonl


@pytest.fixture
def images(photos, tmp_path) -> Path:
    for name in ("coffee", "coffee_red_square", "coffee_blur"):
        path = photos[name]
        (tmp_path / path.name).symlink_to(path)
    return tmp_path


def _manifest(folder: Path, n: int, name: str = "m.jsonl", group_at: int | None = None) -> Path:
    rows = [{"id": f"e{i:02d}", "source": "coffee.png", "edited": "coffee_red_square.png",
             "instruction": f"edit number {i}"} for i in range(n)]
    if group_at is not None:
        rows.insert(group_at, {"id": "grp", "source": "coffee.png",
                               "edited": ["coffee_red_square.png", "coffee_blur.png"], "instruction": "two"})
    return write_jsonl(folder / name, rows)


def _script(folder: Path, delay_s: float = 0.0) -> Path:
    path = folder / "script.json"
    path.write_text(json.dumps({"delay_s": delay_s}) if delay_s else "{}")
    return path


def _scripted(script: Path) -> list[str]:
    return ["--backend", "scripted", "--model", str(script), "--batch-size", "1"]


# -- check: inputs first --------------------------------------------------------


@pytest.mark.parametrize("case", ["missing source", "unreadable edited", "empty instruction"])
def test_check_refuses_bad_inputs_before_loading_any_model(case, images, tmp_path):
    """The model named here does not exist: loading it would fail with its own
    message, so the input's message proves nothing was loaded."""
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    source, edited, instruction = images / "coffee.png", images / "coffee_red_square.png", "Add a red square"
    if case == "missing source":
        source = tmp_path / "missing.png"
    elif case == "unreadable edited":
        edited = not_an_image
    else:
        instruction = "   "
    result = run_cli("check", source, edited, instruction, "--backend", "scripted",
                     "--model", tmp_path / "no-such-model.json")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "loading model" not in result.stderr and "no-such-model" not in result.stderr
    expected = {"missing source": "missing.png: file not found", "unreadable edited": "notes.png: not a readable image",
                "empty instruction": "instruction is empty"}[case]
    assert expected in lines[0]
    assert result.stdout == ""


# -- Ctrl-C ----------------------------------------------------------------------


def _interrupt_after_first_record(args: list[str], output: Path | None) -> tuple[int, str, str]:
    """Start `spatialreward judge ARGS`, send SIGINT once a record is written
    (to ``output``, or to stdout)."""
    proc = subprocess.Popen([spatialreward_exe(), "judge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = ""
    try:
        if output is None:
            first = proc.stdout.readline()
        else:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and not (
                    output.exists() and output.read_bytes().count(b"\n") >= 1):
                time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, first + out, err


def test_ctrl_c_exits_130_and_the_same_command_resumes(images):
    manifest = _manifest(images, 10)
    out = images / "scores.jsonl"
    args = [str(manifest), "-o", str(out), *_scripted(_script(images, delay_s=0.3))]
    code, stdout, stderr = _interrupt_after_first_record(args, out)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "run the same command again to resume" in stderr and str(out) in stderr
    done = len(read_jsonl(out))
    assert 1 <= done < 10

    again = run_cli("judge", *args)
    assert again.returncode == 0, again.stderr
    assert f"{done} edits already in" in again.stderr
    assert [r["id"] for r in read_jsonl(out)] == [f"e{i:02d}" for i in range(10)]


def test_ctrl_c_without_output_file_says_there_is_nothing_to_resume(images):
    manifest = _manifest(images, 10)
    code, stdout, stderr = _interrupt_after_first_record([str(manifest), *_scripted(_script(images, 0.3))], None)
    assert code == 130, stderr
    assert "nothing to resume" in stderr and "-o" in stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert 1 <= len(records) < 10 and all(r["status"] == "ok" for r in records)
