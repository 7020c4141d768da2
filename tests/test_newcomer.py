"""What a new user trips on (issue 19): each check fails without its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spatialreward.commands import main as cli
from spatialreward.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent


# -- 2. a truncated manifest line: its real line and column --------------------

def test_truncated_line_reports_its_real_column(tmp_path):
    path = tmp_path / "m.jsonl"
    good = json.dumps({"id": "ok", "source": "a.png", "edited": "b.png", "instruction": "x"})
    path.write_text(good + '\n{"id": "badjson", "source": "a.png", \n')
    ok, bad = read_manifest(path)
    assert ok.error is None
    assert bad.error.message == (f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes "
                                 "(column 38)")


def test_windows_line_endings_do_not_move_the_column(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", \r\n')
    sample, = read_manifest(path)
    assert sample.error.message.endswith("invalid JSON: Expecting property name enclosed in double quotes (column 13)")


# -- 6. an error row keeps the paths it has ------------------------------------

def test_empty_instruction_error_keeps_both_paths(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "e", "source": "s.png", "edited": "e.png", "instruction": "  "}) + "\n")
    sample, = read_manifest(path)
    assert "empty instruction" in sample.error.message
    assert sample.source == str(tmp_path / "s.png") and sample.edited == str(tmp_path / "e.png")


def test_error_rows_keep_only_usable_paths(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"id": "two", "source": ["s1.png", "s2.png"], "edited": "e.png", "instruction": ""},
        {"id": "nosrc", "edited": "e.png", "instruction": "x"},
        {"id": "badsrc", "source": 3, "edited": ["c1.png", "c2.png"], "instruction": "x"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    two, nosrc, badsrc = read_manifest(path)
    assert two.source == [str(tmp_path / "s1.png"), str(tmp_path / "s2.png")] and two.edited == str(tmp_path / "e.png")
    assert nosrc.source is None and nosrc.edited == str(tmp_path / "e.png")
    assert badsrc.source is None and badsrc.edited is None  # several candidates: no one path stands for the line


def test_folder_manifest_empty_instruction_keeps_its_images(tmp_path):
    for sub in ("source", "edited"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "cat.png").write_bytes(b"")
    (tmp_path / "instructions.jsonl").write_text(json.dumps({"name": "cat", "instruction": ""}) + "\n")
    sample, = read_manifest(tmp_path)
    assert "empty 'instruction'" in sample.error.message
    assert sample.source == str(tmp_path / "source" / "cat.png")
    assert sample.edited == str(tmp_path / "edited" / "cat.png")


def test_report_row_of_an_empty_instruction_shows_its_images(tmp_path, photos):
    """End to end: the error record of an empty-instruction line carries both
    paths, so the report's row has their thumbnails (not "no image path")."""
    import re

    from spatialreward.judge import JudgeResult
    from spatialreward.records import build_record
    from spatialreward.report import write_html_report

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "e", "source": str(photos["coffee"]), "edited": str(photos["astronaut"]),
                                "instruction": ""}) + "\n")
    sample, = read_manifest(path)
    record = build_record(JudgeResult(sample=sample, error=sample.error), model="m", judge_hash="h", config_hash="c")
    assert record["source"] == str(photos["coffee"]) and record["edited"] == str(photos["astronaut"])
    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps(record) + "\n")
    write_html_report(scores, tmp_path / "r.html", threshold=0.5)
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    row, = [r for unit in data["units"] for r in unit]
    assert row["sp"] == str(photos["coffee"]) and row["ep"] == str(photos["astronaut"])
    assert row.get("si") and row.get("ei")  # thumbnails, not "no image path"


# -- 3. a mistyped local folder is not a hub id -------------------------------

def _bench(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)], catch_exceptions=False)


def _no_model(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("spatialreward.commands.options.load_judge", refuse)  # judge_for_output loads through it


@pytest.mark.parametrize("source", ["bench/nope", "./nope", "nope", "a/b/c", "owner/name.parquet", "~/nope",
                                    "owner/", "data/x.jsonl"])
def test_a_missing_path_is_said_at_once(source, tmp_path, monkeypatch):
    import datasets

    def no_hub(*_, **__):
        raise AssertionError(f"{source} was looked up on the hub")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench").mkdir()  # the first component of bench/nope exists here
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    _no_model(monkeypatch)
    result = _bench("mer-bench", "--data", source, "-o", tmp_path / "o")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: no such file or folder: {source} (a hub dataset id is OWNER/NAME, such as SpatialReward/MER-Bench)")


def test_an_owner_name_with_nothing_local_is_a_hub_id(tmp_path, monkeypatch):
    import datasets

    asked = []

    def fake_hub(source, *args, **kwargs):
        asked.append(source)
        raise ConnectionError("offline")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    _no_model(monkeypatch)
    result = _bench("mer-bench", "--data", "someone/MER-Bench", "-o", tmp_path / "o")
    assert result.exit_code == 3 and asked == ["someone/MER-Bench"]
    assert "cannot load hub dataset 'someone/MER-Bench'" in result.stderr


def test_looks_like_path_rules(tmp_path, monkeypatch):
    from spatialreward.bench.data import looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench").mkdir()
    assert not looks_like_path("SpatialReward/MER-Bench")
    assert not looks_like_path("rl-research/multimodal-rewardbench-2")
    assert all(looks_like_path(s) for s in ("bench/nope", ".x/y", "/abs/y", "~/y", "x", "x/y/z", "/", "x/y.parquet",
                                            "x/y.JSONL"))


# -- 4. a copy of another benchmark: a schema error before the model loads ----

@pytest.fixture(scope="module")
def bench_copies(tmp_path_factory) -> dict[str, Path]:
    import bench_fixtures as bf

    root = tmp_path_factory.mktemp("copies")
    mer, erb, mmrb2 = bf.mer_bench(), bf.editreward_bench(), bf.mmrb2_edit()
    mer.save_to_disk(str(root / "mer_disk"))
    return {
        "mer_disk": root / "mer_disk",
        "mer_parquet": bf.save_parquet(mer, root / "mer_parquet"),
        "erb_parquet": bf.save_parquet(erb, root / "erb_parquet"),
        "mmrb2_parquet": bf.save_parquet(mmrb2, root / "mmrb2_parquet", "edit"),
    }


@pytest.mark.parametrize("name, copy, missing", [
    ("editreward-bench", "mer_disk", "input_image, output_images, task_type, dimension"),
    ("editreward-bench", "mer_parquet", "input_image, output_images, task_type, dimension"),
    ("mer-bench", "erb_parquet", "original_image, edited_images"),
    ("mmrb2-edit", "mer_disk", "prompt_text, prompt_images, response_a_images, response_b_images, chosen"),
    ("mer-bench", "mmrb2_parquet", "instruction, original_image, edited_images"),
])
def test_another_benchmark_copy_is_a_schema_error_before_the_model(name, copy, missing, bench_copies, tmp_path,
                                                                   monkeypatch):
    _no_model(monkeypatch)
    out = tmp_path / "o"
    result = _bench(name, "--data", bench_copies[copy], "-o", out, "--limit", "2")
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: {bench_copies[copy]}: schema error: split ")
    assert "schema error" in line and f"lacks the columns {missing} that {name} needs" in line
    assert not (out / "images").exists() and not (out / "scores.jsonl").exists()


def test_the_right_copy_passes_the_column_check(bench_copies, tmp_path):
    from spatialreward.bench import run as bench_run

    for name, copy in (("mer-bench", "mer_disk"), ("editreward-bench", "erb_parquet"), ("mmrb2-edit", "mmrb2_parquet")):
        prepared = bench_run.prepare(name, str(bench_copies[copy]), tmp_path / name, splits=None, limit=1)
        assert prepared.samples


# -- 1. a torch/torchvision pair that does not match: one line, exit 3 --------

NMS = "operator torchvision::nms does not exist"

# A finder that makes importing torchvision fail as a CUDA-linked torchvision
# does on a CPU torch: its module body raises the RuntimeError (the package is
# still found, so its version can be read).
BROKEN_TORCHVISION = f'''
import importlib.abc
import importlib.machinery
import sys


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError({NMS!r})


class BrokenTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" and not name.startswith("torchvision."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _Loader()
        return spec
'''


@pytest.fixture
def broken_torchvision(monkeypatch):
    """In this process: ``import torchvision`` raises the mismatch's RuntimeError."""
    namespace: dict = {}
    exec(BROKEN_TORCHVISION, namespace)
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [namespace["BrokenTorchvision"](), *sys.meta_path])


def _versions():
    import torch

    from spatialreward.torch_pair import _torchvision_version

    return str(torch.__version__), _torchvision_version()


def _assert_one_line_mismatch(line: str):
    torch_version, torchvision_version = _versions()
    assert f"torch {torch_version} and torchvision {torchvision_version} are not a matching pair" in line
    assert NMS in line and "`pip install " in line and f"torch=={torch_version}" in line
    assert "Traceback" not in line and "Qwen2VLImageProcessor" not in line


def test_fix_command_names_one_index():
    from spatialreward.torch_pair import fix_command

    assert fix_command("2.13.0+cpu", "0.28.0") == (
        "pip install torch==2.13.0+cpu torchvision==0.28.0+cpu --index-url https://download.pytorch.org/whl/cpu")
    assert fix_command("2.14.1+cu130", "0.28.0+cpu") == (
        "pip install torch==2.14.1+cu130 torchvision==0.29.1+cu130 --index-url https://download.pytorch.org/whl/cu130")
    assert fix_command("2.14.1", "0.29.1+cpu") == "pip install --force-reinstall torch==2.14.1 torchvision==0.29.1"


def test_the_mismatch_is_found_through_transformers_wrapping():
    from spatialreward.errors import TorchPairError
    from spatialreward.torch_pair import is_mismatch, raise_if_mismatch

    try:
        try:
            raise RuntimeError(NMS)
        except RuntimeError as inner:
            raise ModuleNotFoundError("Could not import module 'Qwen2VLImageProcessor'.") from inner
    except ModuleNotFoundError as exc:
        wrapped = exc
    assert is_mismatch(wrapped) and not is_mismatch(ValueError("other"))
    with pytest.raises(TorchPairError) as caught:
        raise_if_mismatch(wrapped)
    _assert_one_line_mismatch(str(caught.value))
    assert caught.value.exit_code == 3
    raise_if_mismatch(ValueError("other"))  # anything else: left alone


def test_random_model_build_says_the_mismatch(broken_torchvision, tmp_path, capsys):
    from spatialreward.testing import random_model

    with pytest.raises(SystemExit) as exited:
        random_model.main([str(tmp_path / "tiny")])
    assert exited.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: torch ")
    _assert_one_line_mismatch(err[0])


def test_judge_command_says_the_mismatch(broken_torchvision, tiny_model, photos, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "source": str(photos["coffee"]), "edited": str(photos["coffee"]),
                                    "instruction": "x"}) + "\n")
    result = CliRunner().invoke(cli, ["judge", str(manifest), "--model", str(tiny_model), "--device", "cpu",
                                      "-o", str(tmp_path / "s.jsonl"), "-q"])
    assert result.exit_code == 3, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: torch ")
    _assert_one_line_mismatch(line)


def test_a_mismatch_met_inside_transformers_is_one_line_too(tiny_model, monkeypatch):
    """Past the early check (say, another module imports torchvision later):
    transformers' wrapped error still becomes the one line."""
    import transformers

    from spatialreward.backends import transformers_backend as tb
    from spatialreward.errors import TorchPairError

    def broken(*_, **__):
        try:
            raise RuntimeError(NMS)
        except RuntimeError as inner:
            raise ModuleNotFoundError("Could not import module 'Qwen2VLImageProcessor'.") from inner

    monkeypatch.setattr(tb, "check_torch_pair", lambda: None)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", broken)
    with pytest.raises(TorchPairError):
        tb.TransformersBackend.load(str(tiny_model), device="cpu")


def test_random_model_module_in_a_subprocess(tmp_path):
    """`python -m spatialreward.testing.random_model` with torchvision broken by
    an injected sitecustomize: one line on stderr, exit 3."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BROKEN_TORCHVISION + "\nsys.meta_path.insert(0, BrokenTorchvision())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = subprocess.run([sys.executable, "-m", "spatialreward.testing.random_model", str(tmp_path / "tiny")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: torch "), result.stderr
    _assert_one_line_mismatch(lines[0])
    assert not (tmp_path / "tiny").exists()


# -- 7. the CPU warning only for a model that is slow there -------------------

def test_no_cpu_warning_for_the_tiny_model(tiny_model, caplog):
    import logging

    from spatialreward.backends.transformers_backend import TransformersBackend

    with caplog.at_level(logging.WARNING, logger="spatialreward"):
        TransformersBackend.load(str(tiny_model), device="cpu")
    assert not [r for r in caplog.records if "CPU" in r.getMessage()]


def test_cpu_warning_for_a_big_model(caplog):
    import logging

    from spatialreward.backends.transformers_backend import warn_if_slow_on_cpu

    class Shape:  # numel() is all the count reads: no memory for 8e9 parameters
        def numel(self):
            return 1_000_000_000

    class Big:
        def parameters(self):
            return [Shape() for _ in range(8)]

    with caplog.at_level(logging.WARNING, logger="spatialreward"):
        warn_if_slow_on_cpu(Big(), "cuda")
        assert not caplog.records
        warn_if_slow_on_cpu(Big(), "cpu")
    [record] = caplog.records
    assert "minutes per edit with a 8.0B-parameter model" in record.getMessage()


# -- 5. a pass rate over a fraction of the run says so in the headline -------

def _seven_errors_of_nine(tmp_path, photos) -> Path:
    from report_fixtures import err, ok

    records = [ok(f"ok{k}", 0.9, str(photos["coffee"]), str(photos["coffee"])) for k in range(2)]
    records += [err(f"e{k}", "parse", "no JSON in the answer") for k in range(7)]
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_html_headline_shows_the_errors_with_the_pass_rate(tmp_path, photos):
    import re

    scores = _seven_errors_of_nine(tmp_path, photos)
    result = CliRunner().invoke(cli, ["report", str(scores), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    card = re.search(r'<div class="card warn">\s*<div class="label">Pass rate.*?</div>\s*</div>', html, re.S)
    assert card, "the pass-rate card is marked when records are errors"
    assert 'id="pass-rate">100.0%</div>' in card.group(0)
    assert '<div class="judged err-text" id="judged">2 of 9 edits judged: 7 errors</div>' in card.group(0)


def test_html_headline_without_errors_is_unchanged(tmp_path, photos):
    from report_fixtures import ok

    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(ok("a", 0.9, str(photos["coffee"]), str(photos["coffee"]))) + "\n")
    assert CliRunner().invoke(cli, ["report", str(path), "-o", str(tmp_path / "r.html")]).exit_code == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="judged"' not in html and 'class="card warn"' not in html


def test_markdown_and_terminal_summaries_show_the_errors(tmp_path, photos):
    from spatialreward.report import render_markdown
    from spatialreward.summary import render_table, summarize_file

    summary = summarize_file(_seven_errors_of_nine(tmp_path, photos), 0.5)
    markdown = render_markdown(summary, [])
    assert "**100.0%** (2/2 judged edits) — **only 2 of 9 edits judged: 7 errors**" in markdown
    table = render_table(summary)
    assert "pass rate at reward >= 0.5: 100.0% (2/2); only 2 of 9 edits judged: 7 errors" in table


def test_gate_prints_the_errors_beside_the_pass_rate(tmp_path, photos):
    scores = _seven_errors_of_nine(tmp_path, photos)
    result = CliRunner().invoke(cli, ["gate", str(scores), "--min-pass-rate", "0.8", "--max-errors", "10"])
    assert result.exit_code == 0, result.output  # passes: the errors are tolerated...
    assert "only 2 of 9 edits judged: 7 errors" in result.output  # ...but said next to the 100% rate


# -- 7. overlay: every label whole inside the picture, no word broken --------

def _drawn_texts(monkeypatch) -> list:
    """Every text the overlay draws, with the box its ink covers."""
    from PIL import ImageDraw

    drawn = []
    original = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kwargs):
        drawn.append((text, self.textbbox(xy, text, font=kwargs.get("font"))))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    return drawn


def _edit_record(labels, x1=900):
    return {"status": "ok", "instruction": "Make the mug on the right side of the table a deep red colour",
            "reward": 0.61, "sc": 6.0, "pq": 7.0,
            "scores": {"success": 18, "overediting": 20, "naturalness": 21, "artifacts": 22},
            "regions": [{"id": k, "label": label, "bbox_2d": [x1, 100 + 200 * k, 1000, 300 + 200 * k]}
                        for k, label in enumerate(labels)]}


@pytest.mark.parametrize("size", [(64, 48), (120, 90), (300, 200), (640, 480)])
def test_overlay_labels_stay_inside_the_picture(size, monkeypatch):
    from PIL import Image

    from spatialreward.overlay import render_overlay

    drawn = _drawn_texts(monkeypatch)
    image = Image.new("RGB", size, (90, 90, 90))
    labels = ["the mug on the right side of the wooden table", "handle", "a very very long label for a small box"]
    records = [(image, _edit_record(labels)),
               (None, {"kind": "t2i", "status": "ok", "instruction": "a mug to the left of a laptop", "reward": 0.5,
                       "scores": {"spatial": 20, "presence": 25}, "t2i": {"verified_fraction": 1.0},
                       "objects": [{"label": label, "bbox_2d": [950, 10, 1000, 60]} for label in labels]})]
    for source, record in records:
        drawn.clear()
        picture, _ = render_overlay(source, image, record)
        for text, (left, top, right, bottom) in drawn:
            assert 0 <= left and right <= picture.width, (text, (left, right), picture.width)
            assert 0 <= top and bottom <= picture.height, (text, (top, bottom), picture.height)
        shown = " ".join(text for text, _ in drawn)
        for label in labels:
            assert label in shown  # whole, not cut


@pytest.mark.parametrize("width", range(40, 400, 7))
def test_overlay_caption_never_breaks_a_word(width, monkeypatch):
    from PIL import Image

    from spatialreward.overlay import render_overlay

    drawn = _drawn_texts(monkeypatch)
    image = Image.new("RGB", (width, 60), (90, 90, 90))
    render_overlay(image, image, _edit_record([]))
    words = {word for text, _ in drawn for word in text.split()}
    assert "over-editing" in words
    assert not [w for w in words if w.endswith("-") or w in ("editing", "over")]


# -- 7. -q says what it does -------------------------------------------------

@pytest.mark.parametrize("command", ["report", "rescore"])
def test_quiet_help_names_only_what_the_command_prints(command):
    import re

    text = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    quiet = re.search(r"-q, --quiet\s+(.*?)(?:\n\s*-|\Z)", text, re.S).group(1)
    assert "progress" not in quiet
    if command == "report":
        assert "table" not in quiet and "closing lines" in quiet
    else:
        assert "summary table" in quiet


def test_vllm_backend_says_the_mismatch(monkeypatch):
    """--backend vllm: vLLM's own import of a mismatched torchvision is the one line too."""
    import importlib.abc
    import importlib.machinery

    from spatialreward.backends.vllm_backend import VLLMBackend
    from spatialreward.errors import TorchPairError

    class Loader(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise RuntimeError(NMS)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, Loader()) if name == "vllm" else None

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(TorchPairError) as caught:
        VLLMBackend.load("some/model")
    _assert_one_line_mismatch(str(caught.value))
