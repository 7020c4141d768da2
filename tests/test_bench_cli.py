"""`spatialreward bench` end to end on small datasets built in the exact hub
schemas (real photos edited by code), read back from a `save_to_disk` folder
and from parquet files as downloaded: scripted backend (deterministic scores
per image), resume after an interruption, --from/--search, and one run with
the tiny random-weight model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench_fixtures as bf
from conftest import FAST, default_sigint, read_jsonl, spatialreward_exe
from spatialreward.commands import main


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-data")
    mer = bf.mer_bench()
    mer.save_to_disk(str(root / "mer_disk"))
    mmrb2 = bf.mmrb2_edit()
    bf.save_parquet(mmrb2, root / "mmrb2", "edit")
    bf.save_parquet(bf.editreward_bench(), root / "mmrb2", "t2i")  # another config of the repository: ignored
    return {
        "mer_disk": root / "mer_disk",
        "mer_parquet": bf.save_parquet(mer, root / "mer_parquet"),
        "erb_parquet": bf.save_parquet(bf.editreward_bench(), root / "erb_parquet"),
        "erb_disk": _saved(bf.editreward_bench(), root / "erb_disk"),
        "mmrb2": root / "mmrb2",
    }


def _saved(dataset_dict, path: Path) -> Path:
    dataset_dict.save_to_disk(str(path))
    return path


BROKEN = "Add a red square to the astronaut photo"  # its SC answers never parse: error records


def script(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"scores_from_image": True,
                                "by_instruction": {BROKEN: {"sc": "no json here"}}, **extra}))
    return path


def bench(*args) -> "click.testing.Result":
    return CliRunner().invoke(main, ["bench", *map(str, args)], catch_exceptions=False)


def metrics_of(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("scores")
    return metrics


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_mer_bench_from_disk_and_from_parquet(data, tmp_path):
    model = script(tmp_path)
    before = {k: _files(data[k]) for k in ("mer_disk", "mer_parquet")}
    out = tmp_path / "disk"
    result = bench("mer-bench", "--data", data["mer_disk"], "-o", out, "--backend", "scripted", "--model", model)
    assert result.exit_code == 0, result.stderr
    # the table on stdout (and in metrics.md), messages on stderr
    assert result.stdout.startswith("## MER-Bench") and "progress" not in result.stdout
    assert result.stdout.strip() == (out / "metrics.md").read_text().strip()
    assert "loading model" in result.stderr and "9 units, 27 edits to judge" in result.stderr
    assert "error records: 9" in result.stderr

    records = read_jsonl(out / "scores.jsonl")
    assert len(records) == 27 and [r["group_size"] for r in records[:2]] == [2, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    # the astronaut groups (one per split) hold error records: not judged, counted
    assert overall["units"] == 9 and overall["judged"] == 6
    assert overall["not_judged_by"] == {"error": 3}
    assert metrics["by_label"]["remove"]["not_judged"] == 3 and metrics["by_label"]["remove"]["exact_match"] is None
    # exact match recomputed from the records: rewards strictly decreasing in expert order
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    right = sum(all(g[i]["reward"] > g[i + 1]["reward"] for i in range(len(g) - 1))
                for g in groups.values() if all(r["status"] == "ok" for r in g))
    assert overall["exact_match"] == pytest.approx(right / 6)
    assert overall["exact_match_all"] == pytest.approx(right / 9)
    assert metrics["primary"] == {"name": "exact_match", "value": overall["exact_match"], "variant": "strict"}
    assert metrics["strict"]["overall"] == overall and metrics["metrics"] == ["published", "strict"]
    assert "| **all** | published | 9 | 6 |" in result.stdout and "|  | strict | 9 | 6 |" in result.stdout

    # images: written once (content-addressed), byte for byte, decoding to the pixels of the dataset's photo
    images = sorted((out / "images").iterdir())
    assert len(images) == 3 * 5  # three photos, each a source and four edits shared by the splits
    first = next(r for r in records if r["id"] == "2pair/coffee-2#0")
    from PIL import Image

    with Image.open(first["edited"]) as image:
        assert image.convert("RGB").tobytes() == bf.edits("coffee")[1].tobytes()
    assert Path(first["edited"]).parent == out / "images"

    # the parquet files as downloaded give the same metrics
    result = bench("mer-bench", "--data", data["mer_parquet"], "-o", tmp_path / "pq", "--backend", "scripted",
                   "--model", model, "-q")
    assert result.exit_code == 0, result.stderr
    assert metrics_of(tmp_path / "pq") == metrics_of(out)
    assert result.stderr == ""  # -q: no messages
    # the user's copies are read in place: no cache file or converted copy written into them
    assert {k: _files(data[k]) for k in before} == before


A, B = (7, 5, 5, 5), (5, 8, 5, 5)  # one reward once rounded; A above B by one bit in the authors' arithmetic


def _answers(scores) -> dict:
    s1, s2, n, a = scores
    return {"sc": json.dumps({"edit_region": [], "reasoning": "scripted", "score": [s1, s2]}),
            "pq": json.dumps({"reasoning": "scripted", "score": [n, a]})}


def _published_by_hand(groups: list[list[dict]]) -> dict:
    """The authors' arithmetic, written out here: the overall from the raw scores, unrounded; a stable
    sort (ties keep the experts' order); tau and rho of the resulting permutation."""
    sums = {"exact_match": 0.0, "top1": 0.0, "kendall_tau": 0.0, "spearman_rho": 0.0}
    for group in groups:
        overall = [(0.6 * s["success"] / 2.5 + 0.4 * s["overediting"] / 2.5) ** 0.8
                   * (0.5 * s["naturalness"] / 2.5 + 0.5 * s["artifacts"] / 2.5) ** (1 - 0.8)
                   for s in (r["scores"] for r in group)]
        n = len(overall)
        order = sorted(range(n), key=lambda i: -overall[i])  # Python's sort is stable
        position = [order.index(i) for i in range(n)]
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        concordant = sum(position[i] < position[j] for i, j in pairs)
        sums["exact_match"] += order == list(range(n))
        sums["top1"] += order[0] == 0
        sums["kendall_tau"] += (concordant - (len(pairs) - concordant)) / len(pairs)
        sums["spearman_rho"] += 1 - 6 * sum((position[i] - i) ** 2 for i in range(n)) / (n * (n * n - 1))
    return {k: v / len(groups) for k, v in sums.items()}


def test_mer_bench_prints_both_variants_and_published_breaks_ties(data, tmp_path):
    """Every candidate answered alike (all-tie groups), but chelsea's first two edits score A and B: equal
    rewards, one bit apart for the authors. Published: ties in the experts' order, the bit decides; strict:
    every tie wrong."""
    from spatialreward.testing.scripted import image_digest

    chelsea = bf.edits("chelsea")
    model = tmp_path / "ties.json"
    model.write_text(json.dumps({"by_instruction": {BROKEN: {"sc": "no json here"}},
                                 "by_image": {image_digest(chelsea[1]): _answers(A),
                                              image_digest(chelsea[2]): _answers(B)}}))
    out = tmp_path / "ties"
    result = bench("mer-bench", "--data", data["mer_disk"], "-o", out, "--backend", "scripted", "--model", model)
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(out / "scores.jsonl")
    by_id = {r["id"]: r for r in records}
    assert by_id["2pair/chelsea-2#0"]["scores"] == dict(zip(("success", "overediting", "naturalness", "artifacts"), A))
    assert by_id["2pair/chelsea-2#0"]["reward"] == by_id["2pair/chelsea-2#1"]["reward"]
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    judged = [g for g in groups.values() if all(r["status"] == "ok" for r in g)]
    assert len(judged) == 6 and all(len({r["reward"] for r in g}) < len(g) for g in judged)  # every group ties
    metrics = json.loads((out / "metrics.json").read_text())
    published, strict = metrics["published"]["overall"], metrics["strict"]["overall"]
    expected = _published_by_hand(judged)
    for name, value in expected.items():
        assert published[name] == pytest.approx(value, abs=1e-12), name
    # coffee's three groups tie throughout: right for them; chelsea-2 [A, B] right by one bit;
    # chelsea-3 and -4 put the default answer (the highest) after A and B: wrong in both
    assert published["exact_match"] == pytest.approx(4 / 6) and published["top1"] == pytest.approx(4 / 6)
    assert strict["exact_match"] == 0.0 and strict["top1"] == 0.0  # every group ties: all wrong
    assert metrics["by_split"]["2pair"] == metrics["strict"]["by_split"]["2pair"]
    assert metrics["published"]["by_split"]["2pair"]["exact_match"] == 1.0
    # both printed side by side, with what each means
    assert f"| **all** | published | 9 | 6 | {published['exact_match']:.3f} | {published['top1']:.3f} |" in result.stdout
    assert "|  | strict | 9 | 6 | 0.000 | 0.000 |" in result.stdout
    assert "published: the authors' definitions" in result.stdout and "strict: from the recorded" in result.stdout

    # --from: the same figures, or one variant
    result = bench("mer-bench", "--from", out / "scores.jsonl", "-o", tmp_path / "again")
    assert result.exit_code == 0, result.stderr
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again["published"] == metrics["published"] and again["strict"] == metrics["strict"]
    result = bench("mer-bench", "--from", out / "scores.jsonl", "--metrics", "published", "-o", tmp_path / "p")
    assert result.exit_code == 0, result.stderr
    only = json.loads((tmp_path / "p/metrics.json").read_text())
    assert only["metrics"] == ["published"] and "strict" not in only and "overall" not in only
    assert only["published"] == metrics["published"]
    assert "| published |" in result.stdout and "| strict |" not in result.stdout
    result = bench("mer-bench", "--from", out / "scores.jsonl", "--metrics", "strict", "-o", tmp_path / "s")
    assert result.exit_code == 0, result.stderr
    only = json.loads((tmp_path / "s/metrics.json").read_text())
    assert only["metrics"] == ["strict"] and "published" not in only and only["overall"] == strict
    assert "| published |" not in result.stdout
    # rescored with another aggregation, the published figures recombine the raw scores the same way
    result = bench("mer-bench", "--from", out / "scores.jsonl", "--weights", "0,1,0.5,0.5", "-o", tmp_path / "w")
    assert result.exit_code == 0, result.stderr
    rescored = json.loads((tmp_path / "w/metrics.json").read_text())
    assert rescored["published_aggregation"]["weights"] == [0.0, 1.0, 0.5, 0.5]
    assert rescored["published"]["by_split"]["2pair"]["exact_match"] == pytest.approx(1 / 2)  # B's 8 beats A's 5
    # --from a run scored with another aggregation, without saying which: the published figures refuse
    result = bench("mer-bench", "--from", out / "scores.jsonl", "--config", _config(tmp_path, alpha=0.5),
                   "-o", tmp_path / "c")
    assert result.exit_code == 3 and "another aggregation than alpha 0.5" in result.stderr
    result = bench("mer-bench", "--from", out / "scores.jsonl", "--config", _config(tmp_path, alpha=0.5),
                   "--metrics", "strict", "-o", tmp_path / "c")
    assert result.exit_code == 0, result.stderr


def _config(tmp_path: Path, **aggregation) -> Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"aggregation": aggregation}))
    return path


def test_split_and_limit(data, tmp_path):
    result = bench("mer-bench", "--data", data["mer_parquet"], "-o", tmp_path / "o", "--split", "3pair",
                   "--limit", "2", "--backend", "scripted", "--model", script(tmp_path), "-q")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((tmp_path / "o/metrics.json").read_text())
    assert list(metrics["by_split"]) == ["3pair"] and metrics["overall"]["units"] == 2
    assert len(read_jsonl(tmp_path / "o/scores.jsonl")) == 6
    result = bench("mer-bench", "--data", data["mer_parquet"], "-o", tmp_path / "o2", "--split", "5pair",
                   "--backend", "scripted", "--model", script(tmp_path))
    assert result.exit_code == 3 and "no split 5pair (it has: 2pair, 3pair, 4pair)" in result.stderr


def test_editreward_bench_judges_each_distinct_output_once(data, tmp_path):
    out = tmp_path / "erb"
    result = bench("editreward-bench", "--data", data["erb_parquet"], "-o", out, "--backend", "scripted",
                   "--model", script(tmp_path))
    assert result.exit_code == 0, result.stderr
    items = read_jsonl(out / "items.jsonl")
    records = {r["id"]: r for r in read_jsonl(out / "scores.jsonl")}
    assert len(items) == 24 and len(records) == 16  # 4 photos x 4 outputs, each shown under 3 dimensions
    assert "24 units, 16 edits to judge" in result.stderr
    # hand check of every row from the records: the dimension's score, strictly higher
    score = {"prompt_following": lambda r: r["scores"]["success"] / 2.5,
             "consistency": lambda r: r["scores"]["overediting"] / 2.5, "overall": lambda r: r["overall"]}
    metrics = json.loads((out / "metrics.json").read_text())
    for dimension in score:
        by_task: dict[str, list[bool]] = {}
        for item in items:
            if item["dimension"] == dimension:
                better, worse = records[item["better"]], records[item["worse"]]
                by_task.setdefault(item["task_type"], []).append(
                    score[dimension](better) > score[dimension](worse))
        expected = sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
        assert metrics["dimensions"][dimension]["accuracy"] == pytest.approx(expected)
    for baseline in ("GPT-4.1", "GPT-5", "EditScore-7B (Avg@4)", "EditScore-72B (Avg@4)", "0.673", "0.763"):
        assert baseline in result.stdout
    # the same rows saved with save_to_disk: same figures
    result = bench("editreward-bench", "--data", data["erb_disk"], "-o", tmp_path / "disk", "--backend", "scripted",
                   "--model", script(tmp_path), "-q")
    assert result.exit_code == 0 and metrics_of(tmp_path / "disk") == metrics_of(out)


def test_mmrb2_edit_multi_source_rows_judged_with_all_their_sources(data, tmp_path):
    """A row with two source images is judged with both, in order, then the
    edited image, under the multi-image SC prompt (as the MMRB2 evaluation)."""
    from PIL import Image

    from spatialreward.prompts import render_sc

    out = tmp_path / "mm"
    result = bench("mmrb2-edit", "--data", data["mmrb2"], "-o", out, "--split", "test", "--backend", "scripted",
                   "--model", script(tmp_path))
    assert result.exit_code == 0, result.stderr
    info = json.loads((out / "bench.json").read_text())
    assert info["items"] == 4 and info["samples"] == 8 and info["multi_source"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["multi_source_rows"] == 1 and "multi_source" not in metrics and "single_source" not in metrics
    assert "rows with more than one source image: 1 (judged with all of them, in order)" in result.stdout
    assert "judged with the first" not in result.stdout
    assert "73.8" in result.stdout and "Qwen3-VL-8B" in result.stdout
    records = {r["id"]: r for r in read_jsonl(out / "scores.jsonl")}
    items = read_jsonl(out / "items.jsonl")
    right = [records[i["better"]]["reward"] > records[i["worse"]]["reward"] for i in items]
    assert metrics["overall"]["accuracy"] == pytest.approx(sum(right) / 4)
    multi = next(i for i in items if i["sources"] == 2)
    for side in ("better", "worse"):
        record = records[multi[side]]
        assert record["status"] == "ok" and isinstance(record["source"], list) and len(record["source"]) == 2
        for path, photo in zip(record["source"], ("coffee", "astronaut")):  # the row's sources, in order
            with Image.open(path) as image:
                assert image.convert("RGB").tobytes() == bf.edits(photo)[0].tobytes()
    single = next(i for i in items if i["sources"] == 1)
    assert isinstance(records[single["better"]]["source"], str)
    # the same run through the Python API sees both sources, then the edited image, and the multi-image prompt
    from spatialreward.bench.data import load_splits
    from spatialreward.bench import mmrb2
    from spatialreward.bench.data import ImageStore

    rows = load_splits(str(data["mmrb2"]), hub_id=mmrb2.HUB_ID, config=mmrb2.CONFIG, splits=["test"],
                       default_splits=mmrb2.SPLITS)
    prepared = mmrb2.prepare(rows, ImageStore(tmp_path / "images"), None)
    sample = next(s for s in prepared.samples if isinstance(s.source, list))
    assert len(sample.source) == 2
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.testing.scripted import ScriptedBackend, image_digest

    backend = ScriptedBackend({"scores_from_image": True})
    with Judge(backend, load_config()) as judge:
        assert judge.score_many([sample]).__next__().ok
    [sc] = [r for c in backend.calls for r in c["requests"] if r.kind == "sc"]
    assert sc.prompt == render_sc(sample.instruction, "eval", 2)
    assert [image_digest(i) for i in sc.images] == [
        image_digest(bf.edits("coffee")[0]), image_digest(bf.edits("astronaut")[0]),
        image_digest(Image.open(sample.edited).convert("RGB"))]


def test_from_and_search_without_the_model(data, tmp_path):
    out = tmp_path / "erb"
    assert bench("editreward-bench", "--data", data["erb_parquet"], "-o", out, "--backend", "scripted",
                 "--model", script(tmp_path), "-q").exit_code == 0
    stored = json.loads((out / "metrics.json").read_text())
    result = bench("editreward-bench", "--from", out / "scores.jsonl", "--search", "-o", tmp_path / "s")
    assert result.exit_code == 0, result.stderr
    assert "loading model" not in result.stderr
    assert "## Aggregation search: editreward-bench (overall, 607 settings)" in result.stdout
    assert "published default (alpha 0.8, SC 0.6/0.4, PQ 0.5/0.5): rank " in result.stdout
    search = json.loads((tmp_path / "s/search.json").read_text())
    assert search["settings"] == 607 and len(search["all"]) == 607
    default = search["default"]
    assert default["value"] == pytest.approx(stored["dimensions"]["overall"]["accuracy"])
    assert default["rank"] == 1 + sum(1 for row in search["all"] if row["value"] > default["value"])
    assert search["best"][0]["value"] == max(row["value"] for row in search["all"])
    assert {row["setting"] for row in search["all"]} >= {"min_geometric", "mean"}
    # --from with another aggregation rescored from the raw scores
    result = bench("editreward-bench", "--from", out / "scores.jsonl", "--aggregation", "mean", "-o", tmp_path / "m")
    assert result.exit_code == 0
    mean = json.loads((tmp_path / "m/metrics.json").read_text())
    assert mean["aggregation"]["strategy"] == "mean"
    row = next(r for r in search["all"] if r["setting"] == "mean")
    assert mean["dimensions"]["overall"]["accuracy"] == pytest.approx(row["value"])
    # prompt_following and consistency come from raw scores: no aggregation changes them
    assert mean["dimensions"]["consistency"] == stored["dimensions"]["consistency"]


def test_usage_errors(data, tmp_path):
    result = bench("mer-bench", "--data", data["mer_disk"])
    assert result.exit_code == 2 and "-o DIR is required" in result.stderr
    result = bench("mer-bench", "--from", tmp_path / "x.jsonl", "--data", data["mer_disk"])
    assert result.exit_code == 2 and "--data does not apply to --from" in result.stderr
    result = bench("mer-bench", "--from", tmp_path / "scores.jsonl")
    assert result.exit_code == 3 and "bench.json" in result.stderr
    result = bench("mer-bench", "--data", str(tmp_path / "nothing-here"), "-o", tmp_path / "o")
    assert result.exit_code == 3 and "no such file or folder" in result.stderr


def test_without_datasets_a_one_line_install_hint(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    result = bench("mer-bench", "--data", data["mer_disk"], "-o", tmp_path / "o", "--backend", "scripted",
                   "--model", script(tmp_path))
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: the bench command needs the `datasets` package: pip install 'spatialreward[bench]'")


def test_resume_after_interruption(data, tmp_path):
    """Ctrl-C mid-run (exit 130), then the same command finishes the run: the
    records and the metrics equal an uninterrupted run's."""
    slow = script(tmp_path, delay_s=0.3)
    out = tmp_path / "run"
    argv = [spatialreward_exe(), "bench", "mer-bench", "--data", str(data["mer_disk"]), "-o", str(out),
            "--backend", "scripted", "--model", str(slow), "--batch-size", "1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    scores = out / "scores.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (scores.is_file() and len(scores.read_text().splitlines()) >= 2):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted:" in stderr
    done = len(read_jsonl(scores))
    assert 2 <= done < 27

    slow.write_text(json.dumps({**json.loads(slow.read_text()), "delay_s": 0}))  # not part of the fingerprint
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert f"resumed: {done} edits already in {scores} were skipped" in result.stderr
    records = read_jsonl(scores)
    assert len(records) == 27 and len({r["id"] for r in records}) == 27

    fresh = bench("mer-bench", "--data", data["mer_disk"], "-o", tmp_path / "fresh", "--backend", "scripted",
                  "--model", slow, "-q")
    assert fresh.exit_code == 0
    assert metrics_of(out) == metrics_of(tmp_path / "fresh")


def test_tiny_model_end_to_end(data, tiny_model, tmp_path):
    """The real pipeline with the tiny random-weight Qwen3-VL on one 2-candidate group."""
    out = tmp_path / "tiny"
    result = bench("mer-bench", "--data", data["mer_parquet"], "-o", out, "--split", "2pair", "--limit", "1",
                   "--model", tiny_model, *FAST, "--structured", "always")
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(out / "scores.jsonl")
    assert [r["id"] for r in records] == ["2pair/coffee-2#0", "2pair/coffee-2#1"]
    assert all(r["status"] == "ok" for r in records), records
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["units"] == 1 and metrics["overall"]["judged"] == 1
    assert metrics["overall"]["exact_match"] == float(records[0]["reward"] > records[1]["reward"])
    again = bench("mer-bench", "--data", data["mer_parquet"], "-o", out, "--split", "2pair", "--limit", "1",
                  "--model", tiny_model, *FAST, "--structured", "always")
    assert again.exit_code == 0, again.stderr
    assert "resumed: 2 edits already in" in again.stderr
    assert "loading model" not in again.stderr  # nothing left to judge: the model is not loaded
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_hub_id_without_the_hub_says_what_to_do(tmp_path):
    result = bench("mer-bench", "-o", tmp_path / "o", "--backend", "scripted", "--model", script(tmp_path))
    assert result.exit_code == 3
    assert "cannot load hub dataset 'SpatialReward/MER-Bench'" in result.stderr
    assert "pass the folder to --data" in result.stderr


def test_parquet_layouts_as_downloaded(tmp_path):
    from spatialreward.bench.data import _parquet_files

    for name in ("data/2pair-00000-of-00002.parquet", "data/2pair-00001-of-00002.parquet",
                 "data/3pair-00000-of-00001.parquet", "edit/test/0000.parquet", "edit/test/0001.parquet",
                 "t2i/test/0000.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = _parquet_files(tmp_path / "data", None)
    assert {k: len(v) for k, v in files.items()} == {"2pair": 2, "3pair": 1}
    files = _parquet_files(tmp_path, "edit")  # a repository with several configs: this config's files only
    assert files == {"test": [str(tmp_path / "edit/test/0000.parquet"), str(tmp_path / "edit/test/0001.parquet")]}
    assert _parquet_files(tmp_path / "data/3pair-00000-of-00001.parquet", None) == {
        "3pair": [str(tmp_path / "data/3pair-00000-of-00001.parquet")]}
