"""Text-to-image (t2i-spatial) records in every reader of results files:
validation, the summary, the report, the gate, rescore, explain and the
overlay.

The records are made by the real ``spatialreward judge --protocol t2i-spatial``
(the scripted backend's perfect grounding on generated scenes, plus three
scripted answers: an object without a box, so that the model alone decides its
relation; a model verdict the boxes contradict; an answer that cannot be
parsed), then ``report``, ``gate`` and ``rescore`` run as installed commands.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, write_jsonl

from spatialreward.results import record_problem

N_SCENES = 6
# scene-0001: "a purple ring under a orange cone"; scene-0002: "a blue ring to the left of a red diamond"
HIDDEN = "scene-0001"  # the ring has no box: geometry cannot decide, the model does
DISAGREE = "scene-0002"  # the boxes say the relation holds, the model says it does not
GARBLED = "scene-0003-twin"  # an answer that is not JSON: an error record (parse)
T2I_DIMS = ("spatial", "presence")


def _answer(objects, relations, score, reasoning="scripted") -> str:
    return json.dumps({"objects": objects, "relations": relations, "reasoning": reasoning, "score": score})


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict:
    """A t2i results file written by the real judge command, and its records."""
    from spatialreward.images import load_image
    from spatialreward.testing.scenes import make_scene_set, split_rows
    from spatialreward.testing.scripted import image_digest

    root = tmp_path_factory.mktemp("t2i-judged")
    rows, _ = split_rows(make_scene_set(root / "scenes", N_SCENES, seed=1))
    by_id = {row["id"]: row for row in rows}
    assert by_id[HIDDEN]["relations"] == [["purple ring", "under", "orange cone"]]
    assert by_id[DISAGREE]["relations"] == [["blue ring", "to the left of", "red diamond"]]
    manifest = write_jsonl(root / "scenes" / "t2i.jsonl", rows)

    def digest(rid):
        return image_digest(load_image(root / "scenes" / by_id[rid]["image"], role="image"))

    script = {"t2i_ground": True, "by_image": {
        digest(HIDDEN): {"t2i": _answer(
            [{"label": "purple ring", "bbox_2d": None}, {"label": "orange cone", "bbox_2d": [433, 270, 646, 484]}],
            [{"subject": "purple ring", "relation": "under", "object": "orange cone", "holds": True}],
            [20, 10], "The ring is hidden under the cone.")},
        digest(DISAGREE): {"t2i": _answer(
            [{"label": "blue ring", "bbox_2d": [100, 400, 200, 500]},
             {"label": "red diamond", "bbox_2d": [600, 400, 700, 500]}],
            [{"subject": "blue ring", "relation": "left of", "object": "red diamond", "holds": False}],
            [5, 25])},
        digest(GARBLED): {"t2i": "I cannot tell."},
    }}
    (root / "script.json").write_text(json.dumps(script), encoding="utf-8")
    out = root / "t2i.jsonl"
    result = run_cli("judge", manifest, "-o", out, "--backend", "scripted", "--model", root / "script.json",
                     "--protocol", "t2i-spatial", "--structured", "off", cwd=root)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    return {"root": root, "out": out, "records": records, "by_id": {r["id"]: r for r in records},
            "stderr": result.stderr}


def ok_records(judged) -> list[dict]:
    return [r for r in judged["records"] if r["status"] == "ok"]


# --- what the judge wrote ------------------------------------------------------------------


def test_the_judge_writes_valid_t2i_records(judged):
    records, by_id = judged["records"], judged["by_id"]
    assert len(records) == 2 * N_SCENES
    assert all(r["kind"] == "t2i" and r["source"] is None for r in records)
    assert all(record_problem(r) is None for r in records)
    assert by_id[GARBLED]["status"] == "error" and by_id[GARBLED]["error"]["stage"] == "parse"
    hidden = by_id[HIDDEN]["relations"]
    assert [(r["model"], r["geometry"], r["agree"], r["decided_by"]) for r in hidden] == [(True, None, None, "model")]
    assert by_id[HIDDEN]["t2i"]["verified_fraction"] is None
    disagree = by_id[DISAGREE]["relations"]
    assert [(r["model"], r["geometry"], r["agree"], r["decided_by"]) for r in disagree] == [
        (False, True, False, "geometry")]
    # the judge's printed summary is t2i's: its metrics and relations, no edit metric
    stderr = judged["stderr"]
    assert f"images {len(records)}" in stderr
    assert re.search(r"^spatial\s", stderr, re.M) and re.search(r"^verified_fraction\s", stderr, re.M)
    assert not re.search(r"^(sc|pq|overall|success)\s", stderr, re.M)
    assert "relations " in stderr and "decided by geometry" in stderr


def test_the_summary_file_has_t2i_metrics_and_relation_counts(judged):
    summary = json.loads(judged["out"].with_name("t2i.summary.json").read_text(encoding="utf-8"))
    ok = ok_records(judged)
    assert summary["kind"] == "t2i"
    assert set(summary["stats"]) == {"reward", "spatial", "presence", "verified_fraction"}
    assert summary["ok"] == len(ok) == 2 * N_SCENES - 1 and summary["error"] == 1
    assert summary["stats"]["spatial"]["mean"] == pytest.approx(sum(r["scores"]["spatial"] for r in ok) / len(ok))
    fractions = [r["t2i"]["verified_fraction"] for r in ok if r["t2i"]["verified_fraction"] is not None]
    assert len(fractions) == len(ok) - 1  # HIDDEN: nothing decidable, left out
    assert summary["stats"]["verified_fraction"]["mean"] == pytest.approx(sum(fractions) / len(fractions))
    relations = [rel for r in ok for rel in r["relations"]]
    compared = [rel for rel in relations if rel["agree"] is not None]
    assert summary["relations"] == {
        "judged": len(relations),
        "decided_by": {k: sum(rel["decided_by"] == k for rel in relations) for k in ("geometry", "model", "none")},
        "compared": len(compared),
        "agreed": sum(rel["agree"] for rel in compared),
        "agreement_rate": pytest.approx(sum(rel["agree"] for rel in compared) / len(compared)),
    }
    assert summary["relations"]["decided_by"]["model"] == 1 and summary["relations"]["agreed"] < len(compared)


# --- validation ----------------------------------------------------------------------------


def _broken(record, **changes):
    bad = json.loads(json.dumps(record))
    for key, value in changes.items():
        if value is _DROP:
            bad.pop(key)
        else:
            bad[key] = value
    return bad


_DROP = object()


@pytest.mark.parametrize("changes, words", [
    ({"reward": 1.5}, "reward in [0, 1]"),
    ({"scores": {"spatial": 30, "presence": 20}}, "spatial"),
    ({"scores": {"spatial": 20}}, "presence"),
    ({"scores": None}, "spatial"),
    ({"sc": 5.0}, "edit metric 'sc'"),
    ({"overall": 5.0}, "edit metric 'overall'"),
    ({"objects": None}, "objects"),
    ({"objects": [{"label": 3, "bbox_2d": None}]}, "objects[0]"),
    ({"objects": [{"label": "x", "bbox_2d": [0, 0, 2000, 10]}]}, "objects[0].bbox_2d"),
    ({"relations": "left of"}, "relations"),
    ({"relations": [{"subject": "a", "relation": "left of", "object": "b", "model": "yes", "geometry": None,
                     "agree": None, "decided_by": "model"}]}, "relations[0]"),
    ({"relations": [{"subject": "a", "relation": "left of", "object": "b", "model": True, "geometry": None,
                     "agree": None, "decided_by": "vibes"}]}, "decided_by"),
    ({"t2i": _DROP}, "'t2i'"),
    ({"kind": "video"}, "kind"),
])
def test_malformed_t2i_records_are_rejected(judged, changes, words):
    problem = record_problem(_broken(judged["by_id"][DISAGREE], **changes))
    assert problem is not None and words in problem


def test_edit_records_are_validated_as_before(judged):
    edit = {"id": "e", "status": "ok", "reward": 0.5, "overall": 5.0, "sc": 5.0, "pq": 5.0,
            "scores": {"success": 20, "overediting": 15, "naturalness": 22, "artifacts": 18}}
    assert record_problem(edit) is None
    assert record_problem({**edit, "kind": "edit"}) is None
    assert "numeric 'sc'" in record_problem({**edit, "sc": None})
    # an edit record marked t2i is checked as t2i: it has no spatial/presence
    assert "t2i" in record_problem({**edit, "kind": "t2i"})
    # a t2i error record is valid like any error record
    assert record_problem(judged["by_id"][GARBLED]) is None


# --- summary of a mixed file ---------------------------------------------------------------


def _edit_record(rid="edit-1", reward=0.8):
    return {"id": rid, "source": "a.png", "edited": "b.png", "instruction": "Edit it", "meta": {},
            "status": "ok", "error": None, "reward": reward, "overall": 8.0, "sc": 8.0, "pq": 8.0,
            "scores": {"success": 20, "overediting": 15, "naturalness": 22, "artifacts": 18}, "regions": [],
            "reasoning": {"sc": "ok", "pq": "ok"}, "raw": None, "repaired": False}


def test_a_mixed_file_does_not_crash_the_readers(judged, tmp_path):
    from spatialreward.summary import render_table, summarize

    mixed = write_jsonl(tmp_path / "mixed.jsonl", [_edit_record()] + judged["records"])
    summary = summarize(read_jsonl(mixed), 0.5)
    assert summary["kind"] == "mixed" and summary["kinds"] == {"edit": 1, "t2i": 2 * N_SCENES}
    assert summary["stats"]["success"]["mean"] == 20 and summary["stats"]["spatial"] is not None
    assert "mixed file" in render_table(summary)
    report = run_cli("report", mixed, "-o", tmp_path / "mixed.html", "--markdown", tmp_path / "mixed.md")
    assert report.returncode == 0, report.stderr
    assert "mixed file" in (tmp_path / "mixed.md").read_text(encoding="utf-8")
    gate = run_cli("gate", mixed, "--min-mean-reward", "0.1", "--max-errors", "1")
    assert gate.returncode == 0, gate.stdout + gate.stderr


# --- report --------------------------------------------------------------------------------


def _page_data(html: str) -> dict:
    return json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))


@pytest.fixture(scope="module")
def report(judged) -> dict:
    root = judged["root"]
    html_path, md_path = root / "report.html", root / "report.md"
    result = run_cli("report", judged["out"], "-o", html_path, "--markdown", md_path)
    assert result.returncode == 0, result.stderr
    assert f"{2 * N_SCENES} images" in result.stderr
    html = html_path.read_text(encoding="utf-8")
    return {"path": html_path, "html": html, "data": _page_data(html),
            "markdown": md_path.read_text(encoding="utf-8")}


def test_report_rows_hold_prompt_boxes_and_relations(judged, report):
    data = report["data"]
    assert data["kind"] == "t2i"
    assert [c["key"] for c in data["columns"]] == ["reward", "spatial", "presence", "verified_fraction"]
    rows = {row["id"]: row for unit in data["units"] for row in unit}
    for record in ok_records(judged):
        row = rows[record["id"]]
        assert row["k"] == "t2i" and row["ins"] == record["instruction"] and row["sp"] is None
        assert (row["r"], row["ts"], row["tp"]) == (record["reward"], record["scores"]["spatial"],
                                                     record["scores"]["presence"])
        boxed = [o for o in record["objects"] if o["bbox_2d"] is not None]
        assert [b[5] for b in row.get("b", [])] == [o["label"] for o in boxed]  # every box, labelled
        assert [b[:4] for b in row.get("b", [])] == [o["bbox_2d"] for o in boxed]
        assert row["rl"] == [[r["subject"], r["relation"], r["object"], r["model"], r["geometry"], r["agree"],
                              r["decided_by"]] for r in record["relations"]]
    assert rows[HIDDEN]["ab"] == ["purple ring"]  # found by the model, but no box
    assert rows[GARBLED]["st"] == "error" and rows[GARBLED]["es"] == "parse"


def test_report_page_is_t2i_and_self_contained(report):
    html = report["html"]
    # headline metrics and the relations panel are t2i's; no edit columns
    assert 'id="relations-panel"' in html and "model / geometry agreement" in html
    for key in ("spatial", "presence", "verified_fraction"):
        assert f'data-sort="{key}"' in html
    for key in ("overall", "sc", "pq", "success"):
        assert f'data-sort="{key}"' not in html
    assert re.search(r"<td>verified_fraction</td>", html) and not re.search(r"<td>overediting</td>", html)
    # self-contained: no network, images as data: URIs, the CSP kept
    assert "default-src 'none'" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "data:image/jpeg;base64," in html


def test_report_markdown_is_t2i(judged, report):
    markdown = report["markdown"]
    assert f"**{2 * N_SCENES} images**" in markdown
    assert "| spatial |" in markdown and "| verified_fraction |" in markdown and "| success |" not in markdown
    assert "**Relations**" in markdown and "| # | id | reward | prompt | status |" in markdown


@pytest.mark.browser
def test_report_renders_the_relation_table_and_boxes_in_a_browser(judged, report, tmp_path):
    from spatialreward.testing.browser import HeadlessChromium, find_browser, wait_until_ready

    _, _, problem = find_browser()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the report's browser test cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    ok = ok_records(judged)
    with HeadlessChromium(width=1400, height=1000, profile_dir=tmp_path / "profile") as driver:
        driver.get(report["path"].as_uri())
        wait_until_ready(driver)
        shown = driver.execute_script("""
            var out = {};
            document.querySelectorAll('#edits tr.rec').forEach(function (tr) {
              out[tr.dataset.id] = {
                rels: Array.from(tr.querySelectorAll('table.rels tr.rel')).map(function (r) {
                  return Array.from(r.children).map(function (td) { return td.textContent; }); }),
                heads: Array.from(tr.querySelectorAll('table.rels th')).map(function (th) { return th.textContent; }),
                boxes: Array.from(tr.querySelectorAll('.frame.image .box .boxlabel')).map(function (b) {
                  return b.textContent; }),
                sources: tr.querySelectorAll('.frame.source').length,
                prompt: tr.querySelector('p.ins').textContent,
                spatial: (tr.querySelector('td.spatial') || {}).textContent };
            });
            return out;""")
    word = {True: "yes", False: "no", None: "–"}
    for record in ok:
        row = shown[record["id"]]
        assert row["prompt"] == record["instruction"] and row["sources"] == 0
        assert row["heads"] == ["subject", "relation", "object", "model", "geometry", "agree", "decided by"]
        assert row["rels"] == [[r["subject"], r["relation"], r["object"], word[r["model"]], word[r["geometry"]],
                                word[r["agree"]], r["decided_by"]] for r in record["relations"]]
        assert row["boxes"] == [o["label"] for o in record["objects"] if o["bbox_2d"] is not None]
        assert float(row["spatial"]) == pytest.approx(record["scores"]["spatial"], abs=0.05)
    assert shown[DISAGREE]["rels"][0][3:6] == ["no", "yes", "no"]


# --- gate ----------------------------------------------------------------------------------


def test_gate_on_reward_and_pass_rate(judged, tmp_path):
    ok = ok_records(judged)
    mean = sum(r["reward"] for r in ok) / len(ok)
    rate = sum(r["reward"] >= 0.5 for r in ok) / len(ok)
    base = ["gate", judged["out"], "--max-errors", "1"]
    passing = run_cli(*base, "--min-mean-reward", f"{mean - 0.01:.4f}", "--min-pass-rate", f"{rate - 0.01:.4f}",
                      "--min-dimension", "spatial=1", "--summary-md", tmp_path / "gate.md")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "judged images" in passing.stdout and "mean spatial" in passing.stdout
    assert "| spatial |" in (tmp_path / "gate.md").read_text(encoding="utf-8")
    assert run_cli(*base, "--min-mean-reward", f"{mean + 0.01:.4f}").returncode == 1
    assert run_cli(*base, "--min-pass-rate", f"{rate + 0.01:.4f}").returncode == 1
    assert run_cli("gate", judged["out"]).returncode == 1  # one error record, max_errors 0 by default


@pytest.mark.parametrize("criterion, metric", [
    (["--min-dimension", "success=15"], "success"),
    (["--min-dimension", "artifacts=1"], "artifacts"),
    (["--min-dimension", "sc=5"], "sc"),
])
def test_gate_on_an_edit_only_metric_is_a_usage_error(judged, criterion, metric):
    result = run_cli("gate", judged["out"], "--max-errors", "1", *criterion)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0 and f"'{metric}'" in message
    assert "Traceback" not in result.stderr


def test_gate_refuses_an_edit_gate_file_and_a_baseline_of_the_other_kind(judged, tmp_path):
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text("max_errors: 1\ncategories:\n  any:\n    min_dimension_mean: {naturalness: 10}\n",
                         encoding="utf-8")
    result = run_cli("gate", judged["out"], "--config", gate_file)
    assert result.returncode == 2 and "'naturalness' is an edit metric" in result.stderr
    edits = write_jsonl(tmp_path / "edits.jsonl", [_edit_record()])
    # a t2i criterion over edit records is the same usage error
    result = run_cli("gate", edits, "--min-dimension", "spatial=10")
    assert result.returncode == 2 and "'spatial' is a text-to-image (t2i) metric" in result.stderr
    result = run_cli("gate", judged["out"], "--max-errors", "1", "--baseline", edits, "--allow-config-mismatch")
    assert result.returncode == 2 and "cannot be paired" in result.stderr


# --- rescore -------------------------------------------------------------------------------


def _by_hand(record, model, geometry, exponent):
    s, p = record["scores"]["spatial"] / 25, record["scores"]["presence"] / 25
    m = s ** exponent * p ** (1 - exponent)
    decided = [r["geometry"] for r in record["relations"] if r["geometry"] is not None]
    if not decided:
        return m
    return (model * m + geometry * sum(decided) / len(decided)) / (model + geometry)


def test_rescore_with_other_t2i_weights(judged, tmp_path):
    config = tmp_path / "weights.yaml"
    config.write_text("t2i:\n  model: 0.2\n  geometry: 0.8\n  spatial_exponent: 0.5\n", encoding="utf-8")
    out = tmp_path / "rescored.jsonl"
    result = run_cli("rescore", judged["out"], "-o", out, "--config", config, "--aggregation", "mean")
    assert result.returncode == 0, result.stderr
    assert "--aggregation does not apply to the 12 text-to-image (t2i) records" in result.stderr
    rescored = {r["id"]: r for r in read_jsonl(out)}
    changed = 0
    for record in ok_records(judged):
        new = rescored[record["id"]]
        expected = _by_hand(record, 0.2, 0.8, 0.5)
        assert new["reward"] == pytest.approx(expected, abs=1e-6)
        assert new["t2i"]["reward"] == pytest.approx(expected, abs=1e-6)
        assert (new["overall"], new["sc"], new["pq"]) == (None, None, None)
        assert new["scores"] == record["scores"] and new["relations"] == record["relations"]  # nothing invented
        assert new["config_hash"] != record["config_hash"]
        changed += not math.isclose(new["reward"], record["reward"], abs_tol=1e-9)
    assert changed >= 2  # HIDDEN (model part only) and DISAGREE differ from the defaults
    assert rescored[HIDDEN]["reward"] == pytest.approx((20 / 25) ** 0.5 * (10 / 25) ** 0.5, abs=1e-6)
    assert rescored[GARBLED] == {**judged["by_id"][GARBLED], "config_hash": rescored[GARBLED]["config_hash"]}
    assert json.loads(out.with_name("rescored.summary.json").read_text(encoding="utf-8"))["kind"] == "t2i"


def test_rescore_with_the_judges_weights_reproduces_its_records(judged, tmp_path):
    out = tmp_path / "same.jsonl"
    result = run_cli("rescore", judged["out"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert "does not apply" not in result.stderr
    assert read_jsonl(out) == judged["records"]  # rewards, parts and config hash: the judge's own


def test_rescore_library_handles_missing_box_fails(judged):
    from spatialreward.config import Aggregation
    from spatialreward.rescore import rescore_record
    from spatialreward.t2i import T2IWeights

    record = judged["by_id"][HIDDEN]
    strict = rescore_record(record, Aggregation(), T2IWeights(missing_box_fails=True))
    model_part = (20 / 25) ** 0.75 * (10 / 25) ** 0.25
    assert strict["t2i"]["decidable"] == 1 and strict["t2i"]["holding"] == 0
    assert strict["reward"] == pytest.approx((0.5 * model_part + 0.5 * 0.0) / 1.0, abs=1e-6)


# --- explain and overlay -------------------------------------------------------------------


def test_explain_and_overlay_do_not_crash_on_t2i_records(judged):
    from PIL import Image

    from spatialreward.explain import verdict_lines
    from spatialreward.overlay import render_overlay

    record = judged["by_id"][DISAGREE]
    lines = verdict_lines(record, 0.5)
    assert lines[0] == f"prompt: {record['instruction']}"
    assert any("blue ring to the left of red diamond: no / yes / geometry" in line for line in lines)
    assert any(line.startswith("spatial 5/25  presence 25/25") for line in lines)
    error_lines = verdict_lines(judged["by_id"][GARBLED], 0.5)
    assert error_lines[1].startswith("ERROR (parse)")
    with Image.open(record["edited"]) as image:
        picture, layout = render_overlay(None, image, record)
        assert layout.source_origins == () and layout.edited_size == image.size
        x1, y1, x2, y2 = layout.box(record["objects"][0]["bbox_2d"])
        assert picture.getpixel((x1, (y1 + y2) // 2)) != picture.getpixel((x1 - 6, (y1 + y2) // 2))  # drawn
        render_overlay(None, image, judged["by_id"][GARBLED])
