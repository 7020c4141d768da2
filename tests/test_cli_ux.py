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

from conftest import default_sigint, read_jsonl, run_cli, spatialreward_exe, write_jsonl


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


def user_env() -> dict:
    """The environment a user's shell gives: torch's default threads (the suite
    sets one per process; native threads at exit are what these tests check)."""
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def _interrupt_after_first_record(args: list[str], output: Path | None) -> tuple[int, str, str]:
    """Start `spatialreward judge ARGS`, send SIGINT once a record is written
    (to ``output``, or to stdout)."""
    proc = subprocess.Popen([spatialreward_exe(), "judge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=user_env(), preexec_fn=default_sigint)
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


@pytest.mark.parametrize("structured", ["always", "off"])
@pytest.mark.slow  # two runs of the tiny model (-m "not slow" leaves it out)
def test_ctrl_c_on_the_real_model_exits_130_without_an_abort(images, tiny_model, structured):
    """The transformers backend (native threads: torch, xgrammar) on the tiny
    model: SIGINT once a record is written gives exit 130, no 'terminate called'
    abort, every written line whole, and the same command completes the run."""
    manifest = _manifest(images, 5)
    out = images / f"real-{structured}.jsonl"
    args = [str(manifest), "-o", str(out), "--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "24",
            "--structured", structured, "--batch-size", "1"]
    code, _, stderr = _interrupt_after_first_record(args, out)
    assert code == 130, stderr
    assert "terminate called" not in stderr and "Aborted" not in stderr and "Traceback" not in stderr
    written = out.read_text().splitlines()
    assert written and all(json.loads(line)["id"].startswith("e") for line in written)  # no torn line
    again = run_cli("judge", *args)
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == [f"e{i:02d}" for i in range(5)]


def test_ctrl_c_without_output_file_says_there_is_nothing_to_resume(images):
    manifest = _manifest(images, 10)
    code, stdout, stderr = _interrupt_after_first_record([str(manifest), *_scripted(_script(images, 0.3))], None)
    assert code == 130, stderr
    assert "nothing to resume" in stderr and "-o" in stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert 1 <= len(records) < 10 and all(r["status"] == "ok" for r in records)


# -- progress ------------------------------------------------------------------


PROGRESS = re.compile(r"^progress: (\d+)/(\d+) entries \((\d+)%\), [\d.]+ entries/s, ETA [\d:?]+$")


def test_progress_lines_when_stderr_is_not_a_terminal(images):
    """Each 10 % of the entries gives a line (the time interval is set long
    here); the model being loaded is named first. A group is one entry."""
    manifest = _manifest(images, 9, group_at=4)
    script = _script(images)
    result = run_cli("judge", manifest, "-o", images / "s.jsonl", *_scripted(script),
                     env={"SPATIALREWARD_PROGRESS_INTERVAL": "1000"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"loading model {script} (backend scripted) ..."
    progress = [PROGRESS.match(line) for line in lines if line.startswith("progress:")]
    assert all(progress), lines
    assert [(int(m.group(1)), int(m.group(2))) for m in progress] == [(k, 10) for k in range(1, 11)]


def test_progress_every_interval_and_for_other_manifests(images):
    script = _scripted(_script(images, delay_s=0.05))
    # the interval alone: 0 s gives a line per entry, for a total under 10 too
    few = run_cli("judge", _manifest(images, 3), "-o", images / "a.jsonl", *script,
                  env={"SPATIALREWARD_PROGRESS_INTERVAL": "0"})
    assert [line.split(" entries")[0] for line in few.stderr.splitlines() if line.startswith("progress:")] \
        == ["progress: 1/3", "progress: 2/3", "progress: 3/3"]
    # stdin: the total is unknown
    piped = run_cli("judge", "-", *script, input=_manifest(images, 2).read_text(), cwd=images,
                    env={"SPATIALREWARD_PROGRESS_INTERVAL": "0"})
    assert piped.returncode == 0, piped.stderr
    assert [line for line in piped.stderr.splitlines() if line.startswith("progress:")][-1].startswith(
        "progress: 2 entries, ")
    # resume: the entries already done come off the total
    _manifest(images, 5, name="m5.jsonl")
    resumed = run_cli("judge", images / "m5.jsonl", "-o", images / "a.jsonl", *script,
                      env={"SPATIALREWARD_PROGRESS_INTERVAL": "0"})
    assert [line.split(" entries")[0] for line in resumed.stderr.splitlines() if line.startswith("progress:")] \
        == ["progress: 1/2", "progress: 2/2"]


def test_quiet_prints_neither_loading_nor_progress(images):
    result = run_cli("judge", _manifest(images, 3), "-o", images / "q.jsonl", "-q", *_scripted(_script(images)),
                     env={"SPATIALREWARD_PROGRESS_INTERVAL": "0"})
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_terminal_progress_bar_shows_the_total(images):
    """stderr a terminal (a pseudo-terminal here): tqdm's bar with N/TOTAL."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen([spatialreward_exe(), "judge", str(_manifest(images, 4)), "-o", str(images / "t.jsonl"),
                             *_scripted(_script(images))], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "judging: 100%" in text and "4/4" in text


# -- data on stdout, messages on stderr ----------------------------------------------


def test_with_output_file_stdout_stays_empty_and_error_ids_are_listed(images):
    rows = [{"id": f"bad{i:02d}", "source": "coffee.png", "edited": f"missing{i}.png", "instruction": "x"}
            for i in range(12)]
    rows.insert(3, {"id": "good", "source": "coffee.png", "edited": "coffee_red_square.png", "instruction": "x"})
    manifest = write_jsonl(images / "errors.jsonl", rows)
    result = run_cli("judge", manifest, "-o", images / "e.jsonl", *_scripted(_script(images)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "pass rate at reward >= 0.5" in result.stderr
    shown = ", ".join(f"bad{i:02d} (input)" for i in range(10))
    assert f"error records (12): {shown} and 2 more" in result.stderr.splitlines()

    few = run_cli("judge", "-", *_scripted(_script(images)), cwd=images, input="\n".join(
        json.dumps(r) for r in rows[:2]) + "\n")
    assert len(few.stdout.splitlines()) == 2  # records only
    assert "error records (2): bad00 (input), bad01 (input)" in few.stderr.splitlines()


def test_rescore_writes_only_to_its_files_and_says_where(images):
    scores = images / "s.jsonl"
    assert run_cli("judge", _manifest(images, 2), "-o", scores, "-q", *_scripted(_script(images))).returncode == 0
    result = run_cli("rescore", scores, "-o", images / "r.jsonl", "--aggregation", "mean")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"records: {images / 'r.jsonl'}  summary: {images / 'r.summary.json'}" in result.stderr
    assert "pass rate at reward >= 0.5" in result.stderr


def test_json_error_message_has_no_doubled_word(images):
    manifest = images / "torn.jsonl"
    manifest.write_text('{"id": "a", "source": "coffee.png\n')
    result = run_cli("judge", manifest, "-o", images / "t.jsonl", "-q", *_scripted(_script(images)))
    [record] = read_jsonl(images / "t.jsonl")
    assert "invalid JSON" in record["error"]["message"]
    assert " at at " not in record["error"]["message"]
