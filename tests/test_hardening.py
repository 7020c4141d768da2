"""No input can destroy an input file or another run's results: a locked
results file, outputs that name an input, duplicate ids, empty runs. Each test
drives the installed command (with the scripted backend: no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import read_jsonl, run_cli, spatialreward_exe, write_jsonl


@pytest.fixture()
def manifest(photos, tmp_path):
    rows = [{"id": f"e{i}", "source": str(photos["coffee"]), "edited": str(photos[e]), "instruction": f"edit {i}"}
            for i, e in enumerate(["coffee_red_square", "coffee_gray", "coffee_blur"])]
    return write_jsonl(tmp_path / "m.jsonl", rows)


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "script.json"
    path.write_text("{}")
    return path


def judge(manifest, script, *args):
    return run_cli("judge", manifest, "--backend", "scripted", "--model", script, "-q", *args)


def test_a_second_run_on_the_same_results_file_stops_at_once(manifest, script, tmp_path):
    """A real second process holds the file; the CLI refuses at once (exit 3)
    and leaves the other run's records alone."""
    out = tmp_path / "scores.jsonl"
    assert judge(manifest, script, "-o", out).returncode == 0
    before = out.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from spatialreward.output import exclusive
        with exclusive(Path({str(out)!r})):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        for extra in ([], ["--overwrite"], ["--retry-errors"]):
            proc = judge(manifest, script, "-o", out, *extra)
            assert proc.returncode == 3, proc.stderr
            assert "another spatialreward run is writing this file" in proc.stderr
            assert out.read_bytes() == before
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    assert judge(manifest, script, "-o", out).returncode == 0  # free again once the holder is gone


def test_two_judge_processes_at_once_never_interleave(manifest, script, tmp_path, photos):
    """Two real judge runs started together on one -o: one writes, the other
    stops with the lock message; the file holds each id once."""
    big = write_jsonl(tmp_path / "big.jsonl", [
        {"id": f"e{i}", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": f"x {i}"}
        for i in range(40)])
    out = tmp_path / "both.jsonl"
    cmd = [spatialreward_exe(), "judge", str(big), "--backend", "scripted",
           "--model", str(script), "-q", "-o", str(out)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 40
    if codes == [0, 3]:
        assert any("another spatialreward run is writing this file" in err for _, err in outcomes)
    else:  # the first finished before the second started: the second resumed and judged nothing
        assert codes == [0, 0]


def test_readers_refuse_duplicate_ids(manifest, script, tmp_path):
    out = tmp_path / "scores.jsonl"
    assert judge(manifest, script, "-o", out).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(lines + lines[:1]))
    for args in (["gate", dup], ["report", dup, "-o", tmp_path / "r.html"], ["rescore", dup, "-o", tmp_path / "x.jsonl"]):
        proc = run_cli(*args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert f"{dup}:4: id 'e0' already recorded on line 1" in proc.stderr
    proc = judge(manifest, script, "-o", dup)  # resume refuses too
    assert proc.returncode == 3 and "recorded twice" in proc.stderr


def test_output_that_is_the_manifest_is_refused_and_the_manifest_kept(manifest, script, tmp_path):
    before = manifest.read_bytes()
    for extra in ([], ["--overwrite"]):
        proc = judge(manifest, script, "-o", manifest, *extra)
        assert proc.returncode == 2, proc.stderr
        assert f"-o {manifest} is the manifest" in proc.stderr
        assert manifest.read_bytes() == before
    config = tmp_path / "c.yaml"
    config.write_text("threshold: 0.4\n")
    proc = judge(manifest, script, "-o", config, "--config", config)
    assert proc.returncode == 2 and "is the config file" in proc.stderr and config.read_text() == "threshold: 0.4\n"
    proc = judge(manifest, script, "-o", tmp_path / "oops.png")
    assert proc.returncode == 2 and "named like an image" in proc.stderr


def test_folder_manifest_instructions_are_protected(photos, script, tmp_path):
    root = tmp_path / "set"
    for sub in ("source", "edited"):
        (root / sub).mkdir(parents=True)
    (root / "source" / "a.png").write_bytes(photos["coffee"].read_bytes())
    (root / "edited" / "a.png").write_bytes(photos["coffee_blur"].read_bytes())
    instructions = write_jsonl(root / "instructions.jsonl", [{"name": "a", "instruction": "Blur"}])
    before = instructions.read_bytes()
    proc = judge(root, script, "-o", instructions, "--overwrite")
    assert proc.returncode == 2 and "instructions.jsonl" in proc.stderr and instructions.read_bytes() == before


def test_gate_and_report_outputs_never_overwrite_inputs(manifest, script, tmp_path):
    scores = tmp_path / "scores.jsonl"
    assert judge(manifest, script, "-o", scores).returncode == 0
    before = scores.read_bytes()
    proc = run_cli("gate", scores, "--summary-md", scores)
    assert proc.returncode == 2 and "--summary-md" in proc.stderr and "is the scores file" in proc.stderr
    proc = run_cli("gate", scores, "--baseline", scores, "--summary-md", scores)
    assert proc.returncode == 2
    proc = run_cli("report", scores, "-o", tmp_path / "r.html", "--markdown", scores)
    assert proc.returncode == 2 and "--markdown" in proc.stderr
    proc = run_cli("rescore", scores, "-o", scores)
    assert proc.returncode == 2
    assert scores.read_bytes() == before


def test_gate_on_an_empty_scores_file_is_not_a_pass(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_cli("gate", empty)
    assert proc.returncode == 3 and "no records: nothing was judged" in proc.stderr


def test_gate_with_no_judged_edit_fails(tmp_path):
    errors = write_jsonl(tmp_path / "errors.jsonl", [
        {"id": f"e{i}", "status": "error", "error": {"stage": "input", "message": "x"}} for i in range(3)])
    proc = run_cli("gate", errors, "--max-errors", "10")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "judged edits" in proc.stdout


def test_empty_manifest_warns(script, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = judge(empty, script, "-o", tmp_path / "out.jsonl")
    assert proc.returncode == 0
    assert "the manifest holds no edits" in proc.stderr


def test_torn_file_message_says_how_to_repair(manifest, script, tmp_path):
    scores = tmp_path / "scores.jsonl"
    assert judge(manifest, script, "-o", scores).returncode == 0
    scores.write_bytes(scores.read_bytes() + b'{"id": "torn", "sta')
    for args in (["gate", scores], ["report", scores, "-o", tmp_path / "r.html"]):
        proc = run_cli(*args)
        assert proc.returncode == 3
        assert f"{scores}:4" in proc.stderr and "re-run the same `spatialreward judge" in proc.stderr
    assert judge(manifest, script, "-o", scores).returncode == 0  # which repairs it
    assert run_cli("gate", scores).returncode == 0
    assert [r["id"] for r in read_jsonl(scores)] == ["e0", "e1", "e2"]
    json.loads(scores.read_text().splitlines()[-1])


def test_strict_names_the_manifest_line_of_a_bad_image(photos, script, tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "good", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": "Blur"},
        {"id": "bad", "source": str(photos["coffee"]), "edited": str(tmp_path / "nope.png"), "instruction": "Blur"}])
    proc = judge(manifest, script, "-o", tmp_path / "s.jsonl", "--strict")
    assert proc.returncode == 3
    assert f"--strict: {manifest}:2: edited {tmp_path / 'nope.png'}: file not found" in proc.stderr


def test_report_warns_when_configs_are_mixed(manifest, script, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert judge(manifest, script, "-o", a).returncode == 0
    assert run_cli("rescore", a, "-o", b, "--aggregation", "mean", "-q").returncode == 0
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(a.read_text().splitlines(keepends=True)[0] + "".join(b.read_text().splitlines(keepends=True)[1:]))
    proc = run_cli("report", mixed, "-o", tmp_path / "r.html")
    assert proc.returncode == 0
    assert "mixes records of 2 configs" in proc.stderr
    assert run_cli("gate", mixed).returncode == 3  # the gate refuses such a file


def test_lenient_answers_are_scored_through_judge_with_their_notes(photos, tmp_path):
    """Answers the released scorer would read become ok records carrying the
    answer's own scores and what was tolerated (no repair, nothing invented)."""
    sc = ('<think>draft {"edit_region": [], "reasoning": "x", "score": [1, 1]}</think>\n'
          '{"edit_region": [{"id": "0", "bbox_2d": [-12, 100, 1010, 50]}], '
          '"reasoning": "line one\nline two", "score": ["20", 17.5]}')
    pq = '```json\n{"reasoning": "tab\there", "score": [22.5, "19"]}\n```'
    script = tmp_path / "lenient.json"
    script.write_text(json.dumps({"answers": {"sc": sc, "pq": pq}}))
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": str(photos["coffee"]), "edited": str(photos["coffee_blur"]), "instruction": "Blur"}])
    out = tmp_path / "s.jsonl"
    proc = judge(manifest, script, "-o", out)
    assert proc.returncode == 0, proc.stderr
    record, = read_jsonl(out)
    assert record["status"] == "ok" and record["repaired"] is False
    assert record["scores"] == {"success": 20.0, "overediting": 17.5, "naturalness": 22.5, "artifacts": 19.0}
    region, = record["regions"]
    assert region["bbox_2d"] == [0, 50, 1000, 100] and region["label"] == ""
    assert region.get("clipped") and region.get("reordered")
    notes = record["parse_notes"]
    assert any(n.startswith("sc: answer after </think> used") for n in notes)
    assert any(n.startswith("sc:") and "string" in n for n in notes)
    assert any(n.startswith("pq:") for n in notes)
