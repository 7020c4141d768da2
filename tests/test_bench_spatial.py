"""`spatialreward bench spatial-pairs` and `geneval-position`: generated scenes
(testing.scenes) judged through the installed command with the scripted
perfect grounder; the figures recomputed here by hand from the rows, with the
pure t2i functions on what the grounder answers; ties wrong; a pair with a
failed item counted apart; the data checked before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import read_jsonl, run_cli
from spatialreward.commands import main
from spatialreward.t2i import RELATIONS_2D, canonical_relation, parse_t2i, t2i_reward_parts, verify
from spatialreward.testing.scenes import ground_from_pixels, make_scene_set, split_rows

SCENES = 4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("t2i-scenes")
    images, pairs = split_rows(make_scene_set(root, SCENES, seed=3))
    relations = {row["id"]: row["relations"] for row in images}
    pairs = [{**pair, "relations": relations[pair["id"]]} for pair in pairs]
    first = pairs[0]
    extra = [
        # the same image on both sides: one judgment, a tie, wrong
        {"id": "same", "prompt": first["prompt"], "chosen": first["chosen"], "rejected": first["chosen"],
         "relations": first["relations"]},
        # the twin chosen over the original: the judge disagrees, wrong
        {"id": "reversed", "prompt": first["prompt"], "chosen": first["rejected"], "rejected": first["chosen"],
         "relations": first["relations"]},
        # no relations given: the model's own are checked; its type is "(not given)"
        {"id": "bare", "prompt": pairs[1]["prompt"], "chosen": pairs[1]["chosen"], "rejected": pairs[1]["rejected"]},
        # an image that is not there: an error record, the pair not judged
        {"id": "broken", "prompt": first["prompt"], "chosen": first["chosen"], "rejected": "images/missing.png",
         "relations": first["relations"]},
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs + extra))
    (root / "t2i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images))
    script = root / "ground.json"
    script.write_text(json.dumps({"t2i_ground": True}))
    return {"root": root, "images": images, "pairs": pairs + extra, "script": script}


def reward_by_hand(root: Path, image: str, prompt: str, relations) -> tuple[float, list[dict]]:
    """What the judge should record: the grounder's answer parsed, checked, rewarded (default weights)."""
    with Image.open(root / image) as picture:
        size = picture.size
        answer = parse_t2i(ground_from_pixels(picture, prompt), size)
    verdicts = verify(answer, relations, image_size=size)
    return round(t2i_reward_parts(answer, verdicts)["reward"], 6), verdicts


def test_spatial_pairs_accuracy_by_hand(scenes, tmp_path):
    root, out = scenes["root"], tmp_path / "pairs"
    result = run_cli("bench", "spatial-pairs", "--data", root / "pairs.jsonl", "-o", out,
                     "--backend", "scripted", "--model", scenes["script"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## Spatial pairs")
    assert result.stdout.strip() == (out / "metrics.md").read_text().strip()

    right, judged, by_type = 0, 0, {}
    for pair in scenes["pairs"]:
        if pair["id"] == "broken":
            continue
        relations = pair.get("relations")
        chosen = reward_by_hand(root, pair["chosen"], pair["prompt"], relations)[0]
        rejected = reward_by_hand(root, pair["rejected"], pair["prompt"], relations)[0]
        correct = chosen > rejected  # a tie is wrong
        right, judged = right + correct, judged + 1
        for kind in sorted({canonical_relation(r[1]) for r in relations or []}) or ["(not given)"]:
            by_type.setdefault(kind, []).append(correct)
    assert judged == SCENES + 3 and right == SCENES + 1  # the scenes and "bare"; "same" ties, "reversed" loses

    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    assert overall["accuracy"] == pytest.approx(right / judged)
    assert overall["units"] == SCENES + 4 and overall["judged"] == judged
    assert overall["not_judged_by"] == {"error": 1}
    assert overall["accuracy_all"] == pytest.approx(right / (judged + 1))
    assert overall["tie_rate"] == pytest.approx(1 / judged)
    assert metrics["primary"] == {"name": "accuracy", "value": overall["accuracy"], "variant": "strict"}
    assert metrics["protocol"] == "t2i-spatial" and metrics["metrics"] == ["strict"]
    assert set(metrics["by_relation"]) == set(by_type)
    for kind, values in by_type.items():
        assert metrics["by_relation"][kind]["accuracy"] == pytest.approx(sum(values) / len(values)), kind
    assert metrics["identical_pairs"] == 1
    accuracy = f"{100 * right / judged:.1f}"
    assert f"| **this run (t2i-spatial)** | {accuracy} |" in result.stdout
    assert f"judged {judged} of {judged + 1} units; not judged 1 (error 1)" in result.stdout

    # the records are the judge's own t2i records: one per distinct image (the tie pair's image once)
    records = read_jsonl(out / "scores.jsonl")
    assert all(r["kind"] == "t2i" for r in records)
    assert len({r["id"] for r in records}) == len(records) == 2 * SCENES + 3  # + "bare" (no relations) x2, missing
    for record in records:  # each reward is the one computed by hand
        if record["status"] == "ok":
            image = Path(record["edited"]).relative_to(root)
            expected = reward_by_hand(root, image, record["instruction"], record["meta"].get("relations"))[0]
            assert record["reward"] == expected, record["id"]
    missing = [r for r in records if r["status"] == "error"]
    assert len(missing) == 1 and missing[0]["edited"].endswith("missing.png")

    # --from: the same figures from the stored run, no model
    again = CliRunner().invoke(main, ["bench", "spatial-pairs", "--from", str(out / "scores.jsonl"),
                                      "-o", str(tmp_path / "again"), "-q"], catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    stored = json.loads((tmp_path / "again/metrics.json").read_text())
    assert stored["strict"] == metrics["strict"]


def test_geneval_position_on_the_manifest(scenes, tmp_path):
    root, out = scenes["root"], tmp_path / "position"
    result = CliRunner().invoke(main, ["bench", "geneval-position", "--data", str(root / "t2i.jsonl"), "-o", str(out),
                                       "--backend", "scripted", "--model", str(scenes["script"]), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    correct, truth = [], []
    for row in scenes["images"]:
        verdicts = reward_by_hand(root, row["image"], row["prompt"], row["relations"])[1]
        two_d = [(v, h) for v, h in zip(verdicts, row["holds"]) if v["canonical"] in RELATIONS_2D]
        correct.append(all(v["geometry"] is True for v, _ in two_d))
        truth.append(all(h for _, h in two_d))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["position_accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert metrics["overall"]["true_position_accuracy"] == pytest.approx(0.5)  # the originals hold, the twins not
    assert correct == truth  # a perfect grounder: its boxes give the ground truth
    relations = metrics["relations"]
    assert relations["units"] == sum(len(r["relations"]) for r in scenes["images"])
    assert relations["model_accuracy"] == 1.0 and relations["geometry_accuracy"] == 1.0
    assert relations["agreement"] == 1.0 and relations["no_box"] == 0.0
    assert metrics["primary"]["name"] == "position_accuracy"
    assert "## GenEval-style position" in result.stdout


def bench(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)], catch_exceptions=False)


def test_data_checked_before_the_model_loads(tmp_path):
    missing_model = tmp_path / "no-such-script.json"  # loading it would fail: the data must fail first
    rows = [{"prompt": "a red ball left of a blue box", "chosen": "a.png"},
            {"chosen": "a.png", "rejected": "b.png"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = bench("spatial-pairs", "--data", data, "-o", out, "--backend", "scripted", "--model", missing_model)
    assert result.exit_code == 3
    assert "schema error" in result.stderr and "prompt, chosen, rejected" in result.stderr
    assert "line 1 lacks 'rejected'" in result.stderr and "line 2 lacks 'prompt'" in result.stderr
    assert "loading model" not in result.stderr and "is not a file" not in result.stderr
    assert not (out / "scores.jsonl").exists()

    result = bench("spatial-pairs", "--data", tmp_path / "nope.jsonl", "-o", out, "--backend", "scripted",
                   "--model", missing_model, "-q")
    assert result.exit_code == 3
    assert result.stderr.strip().count("\n") == 0 and "nope.jsonl: no such file" in result.stderr

    # a wrong type is a schema error too, before loading
    data.write_text(json.dumps({"prompt": "x", "chosen": "a.png", "rejected": 5, "relations": [["a", "b"]]}) + "\n")
    result = bench("spatial-pairs", "--data", data, "-o", out, "--backend", "scripted", "--model", missing_model)
    assert result.exit_code == 3 and "'rejected' must be a non-empty string" in result.stderr
    assert "'relations' must be a list of [subject, relation, object]" in result.stderr

    # geneval-position: its own columns
    data.write_text(json.dumps({"prompt": "x", "image": "a.png"}) + "\n")
    result = bench("geneval-position", "--data", data, "-o", out, "--backend", "scripted", "--model", missing_model)
    assert result.exit_code == 3 and "line 1 lacks 'relations'" in result.stderr


def test_protocol_is_t2i_spatial(scenes, tmp_path):
    data = scenes["root"] / "pairs.jsonl"
    result = bench("spatial-pairs", "--data", data, "-o", tmp_path / "x", "--protocol", "eval")
    assert result.exit_code == 2 and "--protocol t2i-spatial, not --protocol eval" in result.stderr
    for flags in (["--search"], ["--metrics", "published"], ["--split", "test"]):
        result = bench("spatial-pairs", "--data", data, "-o", tmp_path / "x", *flags)
        assert result.exit_code == 2, flags
    result = bench("geneval-position", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--data FILE is required" in result.stderr
    # a config file naming another protocol: judged under t2i-spatial all the same, said so
    config = tmp_path / "config.yaml"
    config.write_text("protocol: eval\n")
    out = tmp_path / "cfg"
    result = bench("spatial-pairs", "--data", data, "-o", out, "--config", config, "--limit", "1",
                   "--backend", "scripted", "--model", scenes["script"])
    assert result.exit_code == 0, result.stderr
    assert "judging under --protocol t2i-spatial" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["overall"]["accuracy"] == 1.0
