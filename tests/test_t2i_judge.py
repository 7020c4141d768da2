"""Text-to-image spatial judging through the judge: what the model is given (a
spy on the scripted backend's requests), what the records hold, and the CLI
door on generated scenes (real PNG files)."""

from __future__ import annotations

import json
import subprocess

import pytest
from PIL import Image

from conftest import read_jsonl, spatialreward_exe

from spatialreward.config import load_config
from spatialreward.judge import Judge
from spatialreward.sample import Sample
from spatialreward.structured import grammar_for, schema_for
from spatialreward.t2i import parse_t2i, render_t2i, t2i_reward_parts, verify
from spatialreward.testing.scenes import ground_from_pixels, make_scene_set, split_rows
from spatialreward.testing.scripted import ScriptedBackend


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i-scenes")
    rows, pairs = split_rows(make_scene_set(folder, 4, seed=3))
    manifest = folder / "t2i.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, rows, manifest


def judge_with(script: dict, **overrides) -> tuple[Judge, ScriptedBackend]:
    backend = ScriptedBackend(script)
    config = load_config(None, {"protocol": "t2i-spatial", **overrides})
    return Judge(backend, config), backend


def test_the_model_sees_the_image_then_our_prompt(scenes):
    folder, rows, _ = scenes
    judge, backend = judge_with({"t2i_ground": True})
    with judge:
        samples = [Sample(id=r["id"], source=None, edited=str(folder / r["image"]), instruction=f"  {r['prompt']} ",
                          meta={}) for r in rows]
        results = list(judge.score_many(samples))
    requests = [req for call in backend.calls for req in call["requests"]]
    assert len(requests) == len(rows) and {req.kind for req in requests} == {"t2i"}
    seen = {req.images[0].convert("RGB").tobytes(): req for req in requests}  # a scene and its twin share a prompt
    assert all(len(req.images) == 1 for req in requests)
    for row, result in zip(rows, results):
        with Image.open(folder / row["image"]) as original:
            request = seen[original.convert("RGB").tobytes()]  # the image itself, unresized (within the budget)
            assert request.images[0].size == original.size
        assert request.prompt == render_t2i(row["prompt"])  # the prompt stripped, filled in verbatim
        messages = request.messages()
        assert [part["type"] for part in messages[0]["content"]] == ["image", "text"]
        assert result.ok, result.error


def test_records_hold_objects_relations_and_the_reward_by_hand(scenes):
    folder, rows, _ = scenes
    judge, _ = judge_with({"t2i_ground": True})
    with judge:
        samples = [Sample(id=r["id"], source=None, edited=str(folder / r["image"]), instruction=r["prompt"],
                          meta={"relations": r["relations"]}) for r in rows]
        records = [result.to_record() for result in judge.score_many(samples)]
    for row, record in zip(rows, records):
        with Image.open(folder / row["image"]) as image:
            size = image.size
            answer = parse_t2i(ground_from_pixels(image.convert("RGB"), row["prompt"]), size)
        verdicts = verify(answer, row["relations"], image_size=size)
        assert record["kind"] == "t2i" and record["status"] == "ok" and record["source"] is None
        assert record["reward"] == pytest.approx(t2i_reward_parts(answer, verdicts)["reward"], abs=1e-6)
        assert [v["relation"] for v in record["relations"]] == [r[1] for r in row["relations"]]
        assert [v["geometry"] for v in record["relations"]] == row["holds"]  # the drawn truth, by geometry
        assert record["overall"] is None and record["sc"] is None and set(record["scores"]) == {"spatial", "presence"}
        assert all(o["bbox_px"] is not None for o in record["objects"])


def test_kinds_do_not_mix_and_hashes_differ(scenes):
    folder, rows, _ = scenes
    judge, _ = judge_with({"t2i_ground": True})
    edit_judge = Judge(ScriptedBackend({"echo": True}), load_config(None, {}))
    image = str(folder / rows[0]["image"])
    with judge, edit_judge:
        edit_under_t2i = judge.score(image, image, "make it red")
        t2i_under_edit = edit_judge.score(None, image, rows[0]["prompt"])
        bad_relations = judge.score(None, image, rows[0]["prompt"], meta={"relations": [["a", "left of"]]})
    assert edit_under_t2i.error.stage == "input" and "t2i-spatial" in edit_under_t2i.error.message
    assert t2i_under_edit.error.stage == "input" and "--protocol t2i-spatial" in t2i_under_edit.error.message
    assert bad_relations.error.stage == "input" and "relations" in bad_relations.error.message
    assert judge.judge_hash != edit_judge.judge_hash and judge.config_hash != edit_judge.config_hash
    assert load_config(None, {"protocol": "t2i-spatial"}).model == "Qwen/Qwen3-VL-8B-Instruct"
    assert load_config(None, {"protocol": "t2i-spatial", "model": "my/vl"}).model == "my/vl"
    weighted = Judge(ScriptedBackend({"t2i_ground": True}),
                     load_config(None, {"protocol": "t2i-spatial", "t2i": {"geometry": 0.9}}))
    assert weighted.config_hash != judge.config_hash and weighted.judge_hash == judge.judge_hash


def test_an_answer_that_does_not_parse_is_repaired_or_an_error(scenes):
    folder, rows, _ = scenes
    image = str(folder / rows[0]["image"])
    good = ground_from_pixels(Image.open(image).convert("RGB"), rows[0]["prompt"])
    judge, backend = judge_with({"answers": {"t2i": "the cat is left"}, "constrained": {"t2i": good}})
    with judge:
        result = judge.score(None, image, rows[0]["prompt"])
    assert result.ok and result.repaired and backend.calls[-1]["constrained"]
    judge, _ = judge_with({"answers": {"t2i": "no judgment"}}, generation={"structured": "off"})
    with judge:
        result = judge.score(None, image, rows[0]["prompt"])
    assert result.error.stage == "parse" and result.reward is None  # never a made-up score


def test_the_t2i_answer_has_a_grammar():
    schema = schema_for("t2i", 1024)
    assert schema["required"] == ["objects", "relations", "reasoning", "score"]
    assert "holds" in grammar_for("t2i", 1024)


def test_cli_judge_on_generated_scenes(scenes, tmp_path):
    folder, rows, manifest = scenes
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"t2i_ground": True}))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([spatialreward_exe(), "judge", str(manifest), "-o", str(out), "--backend", "scripted",
                           "--model", str(script), "--protocol", "t2i-spatial", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert all(r["kind"] == "t2i" and r["status"] == "ok" for r in records)
    # a perfect grounder: the original scenes hold, their perturbed twins do not
    for row, record in zip(rows, records):
        assert record["t2i"]["verified_fraction"] == pytest.approx(sum(row["holds"]) / len(row["holds"]))


def test_geometry_is_checked_in_the_image_pixels(tmp_path):
    """GenEval's rule is applied in pixels: on a 2000 x 200 image these boxes
    put A left of B (and above it), while on the square 0..1000 grid A is only above."""
    image = tmp_path / "wide.png"
    Image.new("RGB", (2000, 200), (90, 120, 150)).save(image)
    answer = json.dumps({"objects": [{"label": "cat", "bbox_2d": [400, 0, 500, 100]},
                                     {"label": "dog", "bbox_2d": [500, 800, 600, 900]}],
                         "relations": [{"subject": "cat", "relation": "left of", "object": "dog", "holds": True}],
                         "reasoning": "r", "score": [20, 25]})
    judge, _ = judge_with({"answers": {"t2i": answer}})
    with judge:
        record = judge.score(None, str(image), "a cat to the left of a dog").to_record()
    [relation] = record["relations"]
    assert relation["geometry"] is True and relation["agree"] is True and relation["decided_by"] == "geometry"
    assert record["objects"][0]["bbox_px"] == [800, 0, 1000, 20]


def test_serve_judges_text_to_image_items_for_grpo(scenes, tmp_path):
    """`serve --protocol t2i-spatial`: {prompt, image} items through the client,
    Flow-Factory's /compute with condition_images null, and flow_grpo's multi_score."""
    import base64

    import httpx
    import numpy as np
    import torch

    from serve_helpers import start
    from spatialreward.client import RewardClient
    from spatialreward.integrations.flow_grpo import multi_score

    folder, rows, _ = scenes
    server = start(tmp_path, {"t2i_ground": True}, "--protocol", "t2i-spatial")
    try:
        images = [Image.open(folder / r["image"]).convert("RGB") for r in rows]
        with RewardClient(server.url) as client:
            results = client.score([{"prompt": r["prompt"], "image": folder / r["image"], "relations": r["relations"]}
                                    for r in rows])
            edit = client.score([{"source": images[0], "edited": images[0], "instruction": "make it red"}])
        assert all(r.ok for r in results) and edit[0].error["stage"] == "input"
        assert [r.record["t2i"]["verified_fraction"] for r in results] == [
            pytest.approx(sum(r["holds"]) / len(r["holds"])) for r in rows]
        body = {"prompt": [r["prompt"] for r in rows], "image": [base64.b64encode((folder / r["image"]).read_bytes())
                                                                .decode() for r in rows],
                "video": None, "condition_images": None, "condition_videos": None, "kwargs": None}
        answer = httpx.post(server.url + "/compute", json=body, timeout=60).json()
        assert answer["failed"] == [] and answer["rewards"] == [pytest.approx(r.reward) for r in results]
        fn = multi_score("cpu", {"spatialreward": 1.0}, url=server.url, text_to_image=True)
        batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])
        rewards, meta = fn(batch, [r["prompt"] for r in rows], [{} for _ in rows])
        assert len(rewards["spatialreward"]) == len(rows) and not np.isnan(rewards["avg"]).any()
    finally:
        assert server.stop() == 0


def test_check_one_text_to_image_output(scenes, tmp_path):
    folder, rows, _ = scenes
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"t2i_ground": True}))
    base = [spatialreward_exe(), "check", "--backend", "scripted", "--model", str(script)]
    good, twin = rows[0], next(r for r in rows if not all(r["holds"]))
    proc = subprocess.run([*base, str(folder / good["image"]), good["prompt"], "--protocol", "t2i-spatial",
                           "--overlay", str(tmp_path / "v.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "relations (model / geometry / decided by)" in proc.stdout and (tmp_path / "v.png").is_file()
    proc = subprocess.run([*base, str(folder / twin["image"]), twin["prompt"], "--protocol", "t2i-spatial", "--json"],
                          capture_output=True, text=True, timeout=120)
    record = json.loads(proc.stdout)
    assert record["kind"] == "t2i" and [v["geometry"] for v in record["relations"]] == twin["holds"]
    proc = subprocess.run([*base, str(folder / good["image"]), str(folder / good["image"]), "x",
                           "--protocol", "t2i-spatial"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no SOURCE" in proc.stderr
