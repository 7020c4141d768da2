"""The Python API: Judge.from_pretrained, score, score_many (streaming)."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
from PIL import Image

from spatialreward import Judge, JudgeResult, Sample
from spatialreward.aggregate import aggregate


@pytest.fixture(scope="module")
def judge(tiny_model):
    return Judge.from_pretrained(str(tiny_model), device="cpu",
                                 generation={"max_new_tokens": 160, "structured": "always"})


def test_score_paths_and_pil_images_alike(judge, photos):
    by_path = judge.score(photos["coffee"], photos["coffee_red_square"], "Add a red square")
    by_pil = judge.score(Image.open(photos["coffee"]), Image.open(photos["coffee_red_square"]), "Add a red square")
    assert isinstance(by_path, JudgeResult) and by_path.ok and by_path.status == "ok"
    assert by_path.scores == by_pil.scores
    assert by_path.reward == aggregate(by_path.scores, judge.config.aggregation)
    assert 0 <= by_path.reward.reward <= 1
    assert by_path.edited_size == (600, 400)
    record = by_path.to_record()
    assert record["status"] == "ok" and record["config_hash"] == judge.config_hash


def test_bad_edit_is_a_result_not_an_exception(judge, photos, tmp_path):
    missing = judge.score(photos["coffee"], tmp_path / "nope.png", "Add a red square")
    assert not missing.ok and missing.error.stage == "input" and missing.scores is None
    empty = judge.score(photos["coffee"], photos["coffee_blur"], "  ")
    assert empty.error.stage == "input" and "empty instruction" in empty.error.message


def test_score_many_streams_in_order(judge, photos):
    """An endless generator: results arrive batch by batch, in input order."""
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield Sample(id=f"s{i}", source=photos["coffee"], edited=photos["coffee_blur"], instruction=f"edit {i}")

    results = list(itertools.islice(judge.score_many(endless(), window=2), 3))
    assert [r.sample.id for r in results] == ["s0", "s1", "s2"]
    assert all(r.ok for r in results)
    assert len(pulled) <= 6  # only the batches needed, plus one batch of look-ahead, were read


def test_overrides_are_validated(tiny_model):
    from spatialreward.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha"):
        Judge.from_pretrained(str(tiny_model), device="cpu", aggregation={"alpha": 2})


def test_resumed_sampled_run_equals_an_uninterrupted_one(tiny_model, photos):
    """Seeds come from each request's identity, not its batch: a run resumed at
    another batch boundary (one batch of two, then two of one) draws exactly what
    the uninterrupted run drew. Two edits of the same images, their instructions apart."""
    judge = Judge.from_pretrained(str(tiny_model), device="cpu", batch_size=2,
                                  generation={"max_new_tokens": 160, "structured": "always",
                                              "temperature": 1.0, "passes": 2})

    def samples():
        return [Sample(id=f"s{i}", source=photos["coffee"], edited=photos["coffee_red_square"],
                       instruction=f"edit {i}") for i in range(2)]

    whole = [r.to_record() for r in judge.score_many(samples())]
    resumed = [r.to_record() for r in judge.score_many(samples()[:1])]
    resumed += [r.to_record() for r in judge.score_many(samples()[1:])]
    assert resumed == whole
    raws = [(r["raw"]["sc"], r["raw"]["pq"]) for r in whole]
    assert len(set(raws)) == len(raws)  # sampling really drew different answers


def test_the_hash_before_loading_is_the_loaded_judges(judge, tiny_model):
    """What a resumed run checks its results file against before any model
    loads (the backend's identity) is exactly what the loaded judge writes."""
    from spatialreward.judge import identity_before_load

    assert identity_before_load(judge.config, device="cpu") == (judge.judge_hash, judge.config_hash)
    assert identity_before_load(judge.config, device="cpu", dtype="bfloat16")[0] != judge.judge_hash
    with pytest.raises(Exception, match="does not exist"):
        identity_before_load(judge.config.__class__(model=str(tiny_model / "nope")), device="cpu")


def test_a_resumed_run_loads_the_model_only_for_edits_left(judge, photos, tmp_path):
    """runner.run over a DeferredJudge: a finished results file is summarised
    and another config's is refused without loading; one edit left loads once;
    a loaded judge that is not the announced one is refused."""
    from spatialreward.config import with_overrides
    from spatialreward.errors import OutputConflictError, SpatialRewardError
    from spatialreward.judge import identity_before_load
    from spatialreward.runner import DeferredJudge, run

    def samples(n):
        return [Sample(id=f"d{i}", source=photos["coffee"], edited=photos["coffee_red_square"],
                       instruction=f"edit {i}") for i in range(n)]

    out = tmp_path / "s.jsonl"
    run(judge, samples(2), out)
    before = out.read_bytes()
    loads = []

    def deferred(config, loaded=judge):
        return DeferredJudge(lambda: loads.append(1) or loaded, config, identity_before_load(config, device="cpu"))

    report = run(deferred(judge.config), samples(2), out)
    assert loads == [] and report.skipped == 2 and report.written == 0 and out.read_bytes() == before
    assert report.summary["ok"] == 2
    with pytest.raises(OutputConflictError, match="recorded under config"):
        run(deferred(with_overrides(judge.config, {"aggregation": {"alpha": 0.5}})), samples(2), out)
    assert loads == [] and out.read_bytes() == before
    report = run(deferred(judge.config), samples(3), out)
    assert loads == [1] and report.skipped == 2 and report.written == 1
    assert [r["id"] for r in map(json.loads, out.read_text().splitlines())] == ["d0", "d1", "d2"]
    other = SimpleNamespace(judge_hash="0" * 16, config_hash=judge.config_hash)
    with pytest.raises(SpatialRewardError, match="internal error"):
        run(DeferredJudge(lambda: other, judge.config, identity_before_load(judge.config, device="cpu")),
            samples(4), out)
