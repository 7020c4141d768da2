"""End to end: the installed `spatialreward` command, real photos, the tiny
random-weight Qwen3-VL through the real loading and generation code."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAST, read_jsonl, run_cli, spatialreward_exe, write_jsonl

pytestmark = pytest.mark.slow  # the installed command on the tiny model, end to end, many runs (-m "not slow" leaves it out)


DIMS = ("success", "overediting", "naturalness", "artifacts")


def weighted_geometric(s, w=(0.6, 0.4, 0.5, 0.5), alpha=0.8):
    sc = min(10.0, max(0.0, (w[0] * s["success"] + w[1] * s["overediting"]) / 2.5))
    pq = min(10.0, max(0.0, (w[2] * s["naturalness"] + w[3] * s["artifacts"]) / 2.5))
    return sc**alpha * pq ** (1 - alpha) / 10


def min_geometric(s):
    return math.sqrt(min(s["success"], s["overediting"]) * min(s["naturalness"], s["artifacts"])) / 2.5 / 10


def mean_strategy(s):
    return math.sqrt((s["success"] + s["overediting"]) / 2 / 2.5 * (s["naturalness"] + s["artifacts"]) / 2 / 2.5) / 10


@pytest.fixture(scope="module")
def manifest(photos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jsonl")
    for path in photos.values():
        shutil.copy(path, root / path.name)
    return write_jsonl(root / "edits.jsonl", [
        {"id": "red", "source": "coffee.png", "edited": "coffee_red_square.png",
         "instruction": "Add a red square on the right", "category": "add"},
        {"id": "mirror", "source": "astronaut.png", "edited": "astronaut_mirror.png",
         "instruction": "Mirror the photo", "category": "global"},
        {"id": "best-of-3", "source": "coffee.png",
         "edited": ["coffee_gray.jpg", "coffee_blur.png", "coffee_red_square.png"],
         "instruction": "Make the photo black and white", "category": "global"},
    ])


@pytest.fixture(scope="module")
def judged(manifest, tiny_model) -> tuple[Path, subprocess.CompletedProcess]:
    """One `--structured always` run shared by several tests."""
    out = manifest.parent / "scores.jsonl"
    result = run_cli("judge", manifest, "-o", out, "--model", tiny_model, "--structured", "always",
                     "--batch-size", "2", *FAST)
    return out, result


def test_judge_writes_one_ok_record_per_edit(judged):
    out, result = judged
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["red", "mirror", "best-of-3#0", "best-of-3#1", "best-of-3#2"]
    for r in records:
        assert r["status"] == "ok" and r["error"] is None
        assert set(r["scores"]) == set(DIMS)
        assert all(0 <= r["scores"][d] <= 25 for d in DIMS)
        assert r["reward"] == pytest.approx(weighted_geometric(r["scores"]), abs=1e-6)
        assert r["overall"] == pytest.approx(r["reward"] * 10, abs=1e-5)
        assert 0 <= r["sc"] <= 10 and 0 <= r["pq"] <= 10
        assert isinstance(r["reasoning"]["sc"], str) and isinstance(r["reasoning"]["pq"], str)
        assert r["raw"]["sc"].startswith("{") and json.loads(r["raw"]["pq"])["score"]
        assert r["model"].endswith("tiny-qwen3-vl0") or Path(r["model"]).is_dir()
        assert len(r["config_hash"]) == 16 and len(r["judge_hash"]) == 16
        assert Path(r["source"]).is_absolute() and Path(r["edited"]).is_file()
    assert records[0]["meta"] == {"category": "add"}


def test_structured_always_gives_boxes_in_pixels(judged):
    out, _ = judged
    records = read_jsonl(out)
    boxes = [(r, region) for r in records for region in r["regions"]]
    assert boxes, "grammar-constrained answers should carry edit regions"
    for record, region in boxes:
        x1, y1, x2, y2 = region["bbox_2d"]
        assert 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000
        width, height = record["edited_size"]
        assert region["bbox_px"] == [round(x1 * width / 1000), round(y1 * height / 1000),
                                     round(x2 * width / 1000), round(y2 * height / 1000)]
    portrait = next(r for r in records if r["id"] == "mirror")
    assert portrait["edited_size"] == [300, 512]


def test_multi_candidate_group_is_ranked(judged):
    out, _ = judged
    group = [r for r in read_jsonl(out) if r.get("group") == "best-of-3"]
    assert [r["candidate"] for r in group] == [0, 1, 2]
    assert all(r["group_size"] == 3 for r in group)
    by_rank = sorted(group, key=lambda r: (r["rank"], r["candidate"]))
    assert by_rank[0]["rank"] == 1
    for better, worse in zip(by_rank, by_rank[1:]):
        assert better["reward"] >= worse["reward"]
        assert (better["rank"] == worse["rank"]) == (better["reward"] == worse["reward"])


def test_summary_file_and_table(judged):
    out, result = judged
    summary = json.loads(out.with_name("scores.summary.json").read_text())
    records = read_jsonl(out)
    rewards = sorted(r["reward"] for r in records)
    assert summary["total"] == 5 and summary["ok"] == 5 and summary["error"] == 0
    assert summary["stats"]["reward"]["mean"] == pytest.approx(sum(rewards) / 5)
    assert summary["stats"]["reward"]["median"] == pytest.approx(rewards[2])
    assert summary["pass_rate"] == pytest.approx(sum(r >= 0.5 for r in rewards) / 5)
    assert set(summary["categories"]) == {"add", "global"}
    assert summary["categories"]["global"]["total"] == 4
    assert result.stdout == ""  # with -o, stdout carries nothing; the table is a message
    assert "pass rate at reward >= 0.5" in result.stderr
    assert "global" in result.stderr


def test_rerun_resumes_without_judging_again(judged, manifest, tiny_model):
    out, _ = judged
    before = out.read_bytes()
    again = run_cli("judge", manifest, "-o", out, "--model", tiny_model, "--structured", "always",
                    "--batch-size", "2", *FAST)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == before
    assert "5 edits already in" in again.stderr
    assert "loading model" not in again.stderr  # nothing left to judge: the model is not loaded


def test_rescore_equals_the_formulas(judged, tmp_path):
    out, _ = judged
    original = read_jsonl(out)
    for flags, formula in (
        (["--aggregation", "mean"], mean_strategy),
        (["--aggregation", "min_geometric"], min_geometric),
        (["--weights", "0.3,0.7,0.9,0.1", "--alpha", "0.5"],
         lambda s: weighted_geometric(s, (0.3, 0.7, 0.9, 0.1), 0.5)),
    ):
        new = tmp_path / "rescored.jsonl"
        result = run_cli("rescore", out, "-o", new, *flags)
        assert result.returncode == 0, result.stderr
        records = read_jsonl(new)
        assert [r["id"] for r in records] == [r["id"] for r in original]
        for old, r in zip(original, records):
            assert r["scores"] == old["scores"]  # the model's raw scores are untouched
            assert r["reward"] == pytest.approx(formula(r["scores"]), abs=1e-6)
            assert r["judge_hash"] == old["judge_hash"] and r["config_hash"] != old["config_hash"]
        group = [r for r in records if r.get("group")]
        best = max(r["reward"] for r in group)
        assert {r["id"] for r in group if r["rank"] == 1} == {r["id"] for r in group if r["reward"] == best}
        assert (tmp_path / "rescored.summary.json").is_file()


def test_auto_repairs_unparseable_answers_and_off_reports_them(manifest, tiny_model, tmp_path):
    """The random model's free text never parses: `auto` regenerates it under
    the grammar and marks the record; `off` records parse errors, no score."""
    single = write_jsonl(tmp_path / "one.jsonl", [json.loads(manifest.read_text().splitlines()[0])])
    (tmp_path / "coffee.png").symlink_to(manifest.parent / "coffee.png")
    (tmp_path / "coffee_red_square.png").symlink_to(manifest.parent / "coffee_red_square.png")
    auto = run_cli("judge", single, "-o", tmp_path / "auto.jsonl", "--model", tiny_model, *FAST)
    assert auto.returncode == 0, auto.stderr
    [record] = read_jsonl(tmp_path / "auto.jsonl")
    assert record["status"] == "ok" and record["repaired"] is True
    assert set(record["raw_failed"]) == {"sc", "pq"}
    assert record["raw_failed"]["sc"] != record["raw"]["sc"]
    json.loads(record["raw"]["sc"])

    off = run_cli("judge", single, "-o", tmp_path / "off.jsonl", "--model", tiny_model, "--structured", "off", *FAST)
    assert off.returncode == 0, off.stderr
    [record] = read_jsonl(tmp_path / "off.jsonl")
    assert record["status"] == "error" and record["error"]["stage"] == "parse"
    assert record["reward"] is None and record["scores"] is None
    assert "SC answer" in record["error"]["message"]
    summary = json.loads((tmp_path / "off.summary.json").read_text())
    assert summary["errors_by_stage"]["parse"] == 1 and summary["ok"] == 0


def test_passes_average_sampled_scores(manifest, tiny_model, tmp_path):
    out = tmp_path / "passes.jsonl"
    result = run_cli("judge", manifest, "-o", out, "--model", tiny_model, "--passes", "2", "--temperature", "1.0",
                     "--structured", "always", *FAST)
    assert result.returncode == 0, result.stderr
    for r in read_jsonl(out):
        assert r["status"] == "ok"
        assert len(r["passes"]) == 2
        for d in DIMS:
            values = [p[d] for p in r["passes"]]
            assert r["scores"][d] == pytest.approx(sum(values) / 2)
            assert r["spread"][d]["min"] == min(values) and r["spread"][d]["max"] == max(values)
            assert r["spread"][d]["std"] == pytest.approx(abs(values[0] - values[1]) / 2, abs=1e-6)


def test_passes_without_temperature_is_a_usage_error(manifest, tiny_model, tmp_path):
    result = run_cli("judge", manifest, "-o", tmp_path / "x.jsonl", "--model", tiny_model, "--passes", "2", *FAST)
    assert result.returncode == 2
    assert "temperature" in result.stderr and "Traceback" not in result.stderr


def test_folder_manifest_and_edited_dir(photos, tiny_model, tmp_path):
    root = tmp_path / "evalset"
    (root / "source").mkdir(parents=True)
    (root / "edited").mkdir()
    run_b = tmp_path / "model-b"
    (run_b / "cup").mkdir(parents=True)
    shutil.copy(photos["coffee"], root / "source" / "cup.png")
    shutil.copy(photos["astronaut"], root / "source" / "astro.png")
    shutil.copy(photos["coffee_red_square"], root / "edited" / "cup.png")
    shutil.copy(photos["astronaut_mirror"], root / "edited" / "astro.png")
    shutil.copy(photos["coffee_gray"], run_b / "cup" / "a.jpg")
    shutil.copy(photos["coffee_blur"], run_b / "cup" / "b.png")
    shutil.copy(photos["astronaut"], run_b / "astro.png")
    write_jsonl(root / "instructions.jsonl", [
        {"name": "cup", "instruction": "Add a red square", "category": "add"},
        {"name": "astro", "instruction": "Mirror it"},
    ])
    a = run_cli("judge", root, "-o", tmp_path / "a.jsonl", "--model", tiny_model, "--structured", "always", *FAST)
    assert a.returncode == 0, a.stderr
    records = read_jsonl(tmp_path / "a.jsonl")
    assert [r["id"] for r in records] == ["cup", "astro"]
    assert records[0]["edited"] == str(root / "edited" / "cup.png")
    assert records[0]["meta"] == {"category": "add"}

    b = run_cli("judge", root, "--edited-dir", run_b, "-o", tmp_path / "b.jsonl", "--model", tiny_model,
                "--structured", "always", *FAST)
    assert b.returncode == 0, b.stderr
    records = read_jsonl(tmp_path / "b.jsonl")
    assert [r["id"] for r in records] == ["cup#0", "cup#1", "astro"]
    assert [Path(r["edited"]).name for r in records] == ["a.jpg", "b.png", "astro.png"]
    assert sorted(r["rank"] for r in records[:2]) in ([1, 2], [1, 1])
    assert all(r["status"] == "ok" for r in records)


def test_stdin_manifest_to_stdout(photos, tiny_model, tmp_path):
    line = json.dumps({"id": "s", "source": photos["coffee"].name, "edited": photos["coffee_blur"].name,
                       "instruction": "Blur the photo"})
    result = run_cli("judge", "-", "--model", tiny_model, "--structured", "always", *FAST,
                     input=line + "\n", cwd=photos["coffee"].parent)
    assert result.returncode == 0, result.stderr
    [record] = [json.loads(x) for x in result.stdout.splitlines()]
    assert record["id"] == "s" and record["status"] == "ok"
    assert record["source"] == str(photos["coffee"])
    assert "pass rate" in result.stderr  # the table goes to stderr when records go to stdout


def _bomb(path: Path) -> Path:
    """A valid PNG header claiming 30000x30000 pixels: refused before decoding."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def messy(photos, tmp_path) -> Path:
    for path in photos.values():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "notes.png").write_text("this is not an image")
    (tmp_path / "half.png").write_bytes(photos["coffee_blur"].read_bytes()[:5000])
    _bomb(tmp_path / "bomb.png")
    good = {"source": "coffee.png", "edited": "coffee_red_square.png", "instruction": "Add a red square"}
    return write_jsonl(tmp_path / "messy.jsonl", [
        {**good, "id": "good-1"},
        {**good, "id": "missing", "edited": "nope.png"},
        {**good, "id": "not-image", "edited": "notes.png"},
        {**good, "id": "truncated", "edited": "half.png"},
        {**good, "id": "bomb", "edited": "bomb.png"},
        '{"id": "broken", "source": ',
        {"id": "no-edited", "source": "coffee.png", "instruction": "x"},
        {**good, "id": "empty-instruction", "instruction": "   "},
        {**good, "id": "good-1", "instruction": "duplicate id"},
        {**good, "id": "good-2", "edited": "coffee_blur.png"},
    ])


def test_bad_inputs_are_recorded_and_the_rest_judged(messy, tiny_model):
    out = messy.parent / "messy-scores.jsonl"
    result = run_cli("judge", messy, "-o", out, "--model", tiny_model, "--structured", "always", *FAST)
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in read_jsonl(out)}
    assert len(records) == 10
    assert records["good-1"]["status"] == "ok" and records["good-2"]["status"] == "ok"
    expected = {
        "missing": "file not found",
        "not-image": "not a readable image",
        "truncated": "truncated",
        "bomb": "over the limit",
        "line-6": "invalid JSON",
        "no-edited": "missing field 'edited'",
        "empty-instruction": "empty instruction",
        "good-1@9": "duplicate id 'good-1'",
    }
    for sample_id, text in expected.items():
        record = records[sample_id]
        assert record["status"] == "error", sample_id
        assert record["error"]["stage"] == "input"
        assert text in record["error"]["message"], (sample_id, record["error"])
        assert record["reward"] is None and record["scores"] is None
    line_of = {"missing": 2, "line-6": 6, "no-edited": 7, "empty-instruction": 8, "good-1@9": 9}
    for sample_id, line in line_of.items():
        assert records[sample_id]["error"]["origin"] == f"{messy}:{line}"
    summary = json.loads(out.with_name("messy-scores.summary.json").read_text())
    assert summary["errors_by_stage"]["input"] == 8 and summary["ok"] == 2


def test_strict_stops_at_the_first_bad_input(messy, tiny_model):
    out = messy.parent / "strict.jsonl"
    result = run_cli("judge", messy, "-o", out, "--model", tiny_model, "--structured", "always", "--strict", *FAST)
    assert result.returncode == 3
    assert "--strict" in result.stderr and "nope.png" in result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["good-1"]


def test_missing_model_is_one_clear_line(manifest, tmp_path):
    result = run_cli("judge", manifest, "-o", tmp_path / "x.jsonl")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "SpatialReward/SpatialReward-8B" in result.stderr and "hf download" in result.stderr


def test_unknown_config_key_names_the_file(manifest, tiny_model, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("aggregation:\n  strategy: mean\n  wieghts: [1, 0, 0, 0]\n")
    result = run_cli("judge", manifest, "-o", tmp_path / "x.jsonl", "--model", tiny_model, "--config", config)
    assert result.returncode == 2
    assert str(config) in result.stderr and "aggregation.wieghts" in result.stderr


def test_config_file_sets_the_aggregation(judged, tmp_path):
    out, _ = judged
    config = tmp_path / "cfg.yaml"
    config.write_text("aggregation:\n  strategy: min_geometric\nthreshold: 0.9\n")
    result = run_cli("rescore", out, "-o", tmp_path / "r.jsonl", "--config", config)
    assert result.returncode == 0, result.stderr
    for r in read_jsonl(tmp_path / "r.jsonl"):
        assert r["reward"] == pytest.approx(min_geometric(r["scores"]), abs=1e-6)
    assert json.loads((tmp_path / "r.summary.json").read_text())["threshold"] == 0.9


def test_output_from_another_config_is_not_mixed(judged, manifest, tiny_model, tmp_path):
    out, _ = judged
    copy = tmp_path / "copy.jsonl"
    shutil.copy(out, copy)
    result = run_cli("judge", manifest, "-o", copy, "--model", tiny_model, "--structured", "always",
                     "--aggregation", "mean", *FAST)
    assert result.returncode == 3
    assert "--overwrite" in result.stderr and f"{copy}:1" in result.stderr
    assert "loading model" not in result.stderr  # refused before the model loads
    assert copy.read_bytes() == out.read_bytes()


def test_resume_after_sigkill_loses_nothing_and_duplicates_nothing(photos, tiny_model, tmp_path):
    """Kill -9 mid-run, tear the last line as a crash during a write would,
    restart: every edit recorded exactly once, equal to an uninterrupted run."""
    for path in photos.values():
        shutil.copy(path, tmp_path / path.name)
    pairs = [("coffee.png", "coffee_red_square.png"), ("astronaut.png", "astronaut_mirror.png"),
             ("coffee.png", "coffee_blur.png")]
    rows = [{"id": f"e{i:02d}", "source": pairs[i % 3][0], "edited": pairs[i % 3][1], "instruction": f"edit number {i}"}
            for i in range(6)]
    rows.insert(3, {"id": "grp", "source": "coffee.png", "edited": ["coffee_gray.jpg", "coffee_blur.png"],
                    "instruction": "Make it gray"})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    args = [manifest, "--model", tiny_model, "--structured", "always", "--batch-size", "1", *FAST]

    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([spatialreward_exe(), "judge", *map(str, args), "-o", str(killed), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not killed.exists() or killed.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines_at_kill = killed.read_bytes().count(b"\n")
    assert 3 <= lines_at_kill < 8, "the run should be killed midway"
    with killed.open("ab") as handle:  # a torn record, as if killed inside a write
        handle.write(b'{"id": "e99", "status": "ok", "rew')

    resumed = run_cli("judge", *args, "-o", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "torn last line" in resumed.stderr

    reference = tmp_path / "reference.jsonl"
    assert run_cli("judge", *args, "-o", reference, "-q").returncode == 0
    got, want = read_jsonl(killed), read_jsonl(reference)
    assert [r["id"] for r in got] == [r["id"] for r in want]  # all 8, once each, in manifest order
    assert len({r["id"] for r in got}) == 8
    for a, b in zip(got, want):
        assert (a["reward"], a["raw"], a.get("rank")) == (b["reward"], b["raw"], b.get("rank"))
