"""Every command that writes a results file, a summary, a report or metrics
takes the lock `judge -o` takes (`output.exclusive`, `.NAME.lock` beside the
file) before it creates or truncates anything: a file another run holds is
refused at once (exit 3, one line naming it) and left byte for byte as it was.
The other holder is a real second process: the helper in a subprocess, or a
running `spatialreward judge -o`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, spatialreward_exe, write_jsonl
from spatialreward.errors import OutputConflictError
from spatialreward.output import exclusive, lock_path

HASH = "feedfacecafebeef"
HOLDER = """
import sys
from pathlib import Path
from spatialreward.output import exclusive
with exclusive(*map(Path, sys.argv[1:])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@contextlib.contextmanager
def held(*paths: Path):
    """Another process holds ``paths`` (through the same helper) for the block."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def refusal(path: Path, flag: str = "-o") -> str:
    return (f"Error: {path}: another spatialreward run is writing this file; wait for it to finish "
            f"or write to another {flag}")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (lock files aside: empty, left in place)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def ok(rid: str, reward: float, scores=(20, 18, 22, 21)) -> dict:
    return {"id": rid, "status": "ok", "error": None, "reward": reward, "overall": reward * 10, "sc": 8.0, "pq": 8.0,
            "scores": dict(zip(("success", "overediting", "naturalness", "artifacts"), scores)), "meta": {},
            "instruction": f"edit {rid}", "source": f"/x/{rid}-src.png", "edited": f"/x/{rid}.png",
            "config_hash": HASH, "judge_hash": "0" * 16}


@pytest.fixture()
def scores(tmp_path) -> Path:
    """A results file to read (the commands' input)."""
    (tmp_path / "in").mkdir()
    return write_jsonl(tmp_path / "in" / "scores.jsonl", [ok(f"e{i}", 0.5 + i / 20) for i in range(4)])


def assert_refused(proc, path: Path, flag: str = "-o") -> None:
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [refusal(path, flag)]


# -- each writer refuses a held file --------------------------------------------


def test_rescore_refuses_a_held_output_and_leaves_it_whole(scores, tmp_path):
    out = tmp_path / "out" / "live.jsonl"
    out.parent.mkdir()
    write_jsonl(out, [ok(f"live{i}", 0.7) for i in range(100)])
    (tmp_path / "out" / "live.summary.json").write_text('{"total": 100}\n')
    before = snapshot(out.parent)
    with held(out):
        proc = run_cli("rescore", scores, "-o", out, "--aggregation", "mean")
        assert_refused(proc, out)
        assert snapshot(out.parent) == before
    assert snapshot(out.parent) == before
    # free again: the same command rewrites the file whole
    assert run_cli("rescore", scores, "-o", out, "--aggregation", "mean", "-q").returncode == 0
    assert [r["id"] for r in read_jsonl(out)] == ["e0", "e1", "e2", "e3"]
    assert json.loads((tmp_path / "out" / "live.summary.json").read_text())["total"] == 4
    assert sorted(p.name for p in out.parent.iterdir()) == [".live.jsonl.lock", "live.jsonl", "live.summary.json"]


def test_gate_refuses_a_held_summary_md(scores, tmp_path):
    md = tmp_path / "out" / "gate.md"
    md.parent.mkdir()
    md.write_text("# the other run's summary\n")
    with held(md):
        proc = run_cli("gate", scores, "--summary-md", md)
        assert_refused(proc, md, "--summary-md")
        assert md.read_text() == "# the other run's summary\n"
    assert run_cli("gate", scores, "--summary-md", md).returncode == 0
    assert "spatialreward gate" in md.read_text()  # free again: written


def test_report_refuses_a_held_markdown(scores, tmp_path):
    html, md = tmp_path / "out" / "r.html", tmp_path / "out" / "r.md"
    html.parent.mkdir()
    html.write_text("<p>old report</p>")
    md.write_text("old summary\n")
    before = snapshot(html.parent)
    with held(md):
        proc = run_cli("report", scores, "-o", html, "--markdown", md)
        assert_refused(proc, md, "--markdown")
        assert snapshot(html.parent) == before  # the HTML (not held) is not written either
    assert run_cli("report", scores, "-o", html, "--markdown", md, "-q").returncode == 0
    assert md.read_text() != "old summary\n" and html.read_text() != "<p>old report</p>"


def test_report_refuses_a_held_output(scores, tmp_path):
    html = tmp_path / "out" / "r.html"
    html.parent.mkdir()
    html.write_text("<p>old report</p>")
    with held(html):
        for extra in ([], ["--markdown", str(tmp_path / "out" / "r.md")]):
            proc = run_cli("report", scores, "-o", html, *extra)
            assert_refused(proc, html)
            assert html.read_text() == "<p>old report</p>"
            assert not (tmp_path / "out" / "r.md").exists()


def test_a_results_file_held_by_judge_is_not_a_report_or_gate_target(scores, tmp_path):
    """The lock is one per file, whatever command writes it: a results file
    held as `-o` refuses `report -o`/`--markdown` and `gate --summary-md` too,
    also when named through a symbolic link to its folder."""
    out = write_jsonl(tmp_path / "live.jsonl", [ok("x", 0.9)])
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with held(out):
        assert_refused(run_cli("report", scores, "-o", link / "live.jsonl"), link / "live.jsonl")
        assert_refused(run_cli("report", scores, "-o", tmp_path / "r.html", "--markdown", out), out, "--markdown")
        assert_refused(run_cli("gate", scores, "--summary-md", out), out, "--summary-md")
        assert_refused(run_cli("rescore", scores, "-o", link / "live.jsonl"), link / "live.jsonl")
    assert read_jsonl(out) == [ok("x", 0.9)]


# -- bench ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """A finished `bench mer-bench -o DIR` run (two groups, scripted backend; in this process, which
    builds the data anyway: the datasets import once)."""
    import bench_fixtures as bf

    root = tmp_path_factory.mktemp("bench")
    bf.mer_bench().save_to_disk(str(root / "data"))
    script = root / "script.json"
    script.write_text(json.dumps({"scores_from_image": True}))
    from click.testing import CliRunner

    from spatialreward.commands import main

    result = CliRunner().invoke(main, ["bench", "mer-bench", "--data", str(root / "data"), "--split", "2pair",
                                       "--limit", "2", "-o", str(root / "run"), "--backend", "scripted",
                                       "--model", str(script), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return root


def test_bench_refuses_a_held_results_file(bench_dir):
    run = bench_dir / "run"
    before = snapshot(run)
    assert {"scores.jsonl", "metrics.json", "metrics.md", "items.jsonl"} <= set(before)
    with held(run / "scores.jsonl"):
        for extra in ([], ["--overwrite"]):
            proc = run_cli("bench", "mer-bench", "--data", bench_dir / "data", "-o", run, "--backend", "scripted",
                           "--model", bench_dir / "script.json", "-q", *extra)
            assert_refused(proc, run / "scores.jsonl")
            assert snapshot(run) == before  # nothing prepared, judged or measured


def test_bench_refuses_held_metrics(bench_dir, tmp_path):
    run = bench_dir / "run"
    before = snapshot(run)
    with held(run / "metrics.md"):
        proc = run_cli("bench", "mer-bench", "--from", run / "scores.jsonl", "--aggregation", "mean", "-q")
        assert_refused(proc, run / "metrics.md")
        proc = run_cli("bench", "mer-bench", "--data", bench_dir / "data", "-o", run, "--backend", "scripted",
                       "--model", bench_dir / "script.json", "-q")
        assert_refused(proc, run / "metrics.md")
        assert snapshot(run) == before
    with held(run / "search.json"):
        proc = run_cli("bench", "mer-bench", "--from", run / "scores.jsonl", "--search", "-o", tmp_path, "-q")
        assert proc.returncode == 0, proc.stderr  # another folder: not held
        proc = run_cli("bench", "mer-bench", "--from", run / "scores.jsonl", "--search", "-q")
        assert_refused(proc, run / "search.json")
    assert snapshot(run) == before
    proc = run_cli("bench", "mer-bench", "--from", run / "scores.jsonl", "-q")  # free again
    assert proc.returncode == 0, proc.stderr
    after = snapshot(run)
    assert after["metrics.md"] == before["metrics.md"]  # the same figures; metrics.json says "as recorded"
    assert {k: v for k, v in after.items() if k != "metrics.json"} == {k: v for k, v in before.items()
                                                                     if k != "metrics.json"}


# -- a real judge run against rescore -------------------------------------------


def test_rescore_into_a_file_a_running_judge_writes_is_refused(photos, tmp_path):
    """The measured bug: `rescore -o FILE` truncated a live results file
    (100 records to 4). Now it stops while `judge -o FILE` runs, and judge
    finishes with all its records."""
    edits = ["coffee_red_square", "coffee_gray", "coffee_blur"]
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"e{i}", "source": str(photos["coffee"]), "edited": str(photos[edits[i % 3]]),
         "instruction": f"edit {i}"} for i in range(4)])
    script = tmp_path / "slow.json"
    script.write_text(json.dumps({"delay_s": 0.5}))
    out, other = tmp_path / "live.jsonl", tmp_path / "other.jsonl"
    write_jsonl(other, [ok(f"o{i}", 0.6) for i in range(4)])
    judge = subprocess.Popen([spatialreward_exe(), "judge", str(manifest), "-o", str(out), "--backend", "scripted",
                              "--model", str(script), "--batch-size", "1", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 1):
            assert judge.poll() is None and time.monotonic() < deadline, "judge ended before writing a record"
            time.sleep(0.05)
        assert judge.poll() is None, "judge finished too soon: make the script slower"
        before = out.read_bytes()
        proc = run_cli("rescore", other, "-o", out, "--aggregation", "mean")
        assert_refused(proc, out)
        assert out.read_bytes().startswith(before)  # not cut: judge's records are all there, maybe more
        assert judge.poll() is None, "judge must still be running for the refusal to mean anything"
        _, stderr = judge.communicate(timeout=60)
    finally:
        if judge.poll() is None:
            judge.kill()
            judge.wait()
    assert judge.returncode == 0, stderr
    assert [r["id"] for r in read_jsonl(out)] == [f"e{i}" for i in range(4)]
    assert all(r["status"] == "ok" for r in read_jsonl(out))
    # judge done: the lock is free and rescore writes the file
    assert run_cli("rescore", other, "-o", out, "-q").returncode == 0
    assert [r["id"] for r in read_jsonl(out)] == [f"o{i}" for i in range(4)]


# -- the helper -----------------------------------------------------------------


def test_helper_nests_in_one_thread_and_refuses_another(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.md"
    with exclusive(a, ("--summary-md", b), ("--markdown", None), None):
        assert lock_path(a).is_file() and lock_path(b).is_file()
        with exclusive(a):  # the same run again (bench -> runner.run): nests
            pass
        outcome = []

        def other_thread():
            try:
                with exclusive(("--summary-md", b)):
                    outcome.append("acquired")
            except OutputConflictError as exc:
                outcome.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert outcome == [f"{b}: another spatialreward run is writing this file; wait for it to finish or write "
                           "to another --summary-md"]
    # released: another process takes both
    with held(a, b):
        with pytest.raises(OutputConflictError, match="a.jsonl: another spatialreward run"):
            with exclusive(a):
                pass


def test_helper_lets_go_of_what_it_took_when_one_file_is_held(tmp_path):
    free, taken = tmp_path / "free.json", tmp_path / "taken.md"
    with held(taken):
        with pytest.raises(OutputConflictError, match="taken.md"):
            with exclusive(free, taken):
                pytest.fail("must not enter")
        with held(free):  # `free` was let go at once: another process can take it
            pass
