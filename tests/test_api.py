"""The Python API: Judge.from_pretrained, score, score_many (streaming)."""

from __future__ import annotations

import itertools

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
