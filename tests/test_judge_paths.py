"""The judge's failure paths, with a scripted backend: model-stage errors, the
one-by-one fallback after a failed batch, a wrong number of answers, repair
failures, a failure in the second pass; and images given as PIL objects."""

from __future__ import annotations

import pytest
from PIL import Image

from spatialreward.config import load_config
from spatialreward.judge import Judge, request_seed
from spatialreward.sample import Sample
from spatialreward.testing.scripted import PQ_OK, SC_OK, ScriptedBackend, image_digest
from spatialreward.images import load_image


def samples(photos, n=4):
    edits = ["coffee_red_square", "coffee_gray", "coffee_blur", "coffee_red_square"]
    return [Sample(id=f"s{i}", source=photos["coffee"], edited=photos[edits[i % 4]], instruction=f"edit number {i}")
            for i in range(n)]


def judge_with(backend, **overrides) -> Judge:
    return Judge(backend, load_config(overrides={"batch_size": 4, **overrides}))


def test_a_failing_request_fails_only_its_edit(photos):
    """The batch raises; each request is then tried alone: the bad one becomes a
    model-stage error, the others are judged."""
    backend = ScriptedBackend({"by_instruction": {"edit number 2": {"sc": "!raise CUDA out of memory"}}})
    results = list(judge_with(backend).score_many(samples(photos)))
    assert [r.status for r in results] == ["ok", "ok", "error", "ok"]
    bad = results[2]
    assert bad.error.stage == "model" and bad.scores is None and bad.reward is None
    assert "SC generation failed: RuntimeError: CUDA out of memory" in bad.error.message
    # the bad request ended alone (a batch holding it is retried one by one: see test_scheduler.py)
    holding = [c for c in backend.calls if any("edit number 2" in r.prompt for r in c["requests"])]
    assert len(holding[-1]["requests"]) == 1


class CountingBackend(ScriptedBackend):
    """Returns ``extra`` answers more (or fewer) than requested for batches of ``when`` requests."""

    def __init__(self, extra: int, when):
        super().__init__()
        self.extra, self.when = extra, when

    def generate(self, requests, generation, *, constrained):
        answers = super().generate(requests, generation, constrained=constrained)
        if self.when(len(requests)):
            answers = answers[:len(answers) + self.extra] if self.extra < 0 else answers + answers[: self.extra]
        return answers


def test_too_few_answers_for_a_batch_are_retried_one_by_one(photos):
    backend = CountingBackend(-1, when=lambda n: n > 1)
    results = list(judge_with(backend).score_many(samples(photos)))
    assert all(r.ok for r in results)
    assert all(r.scores.success == 20 and r.scores.naturalness == 22 for r in results)


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_wrong_number_of_answers_is_a_model_error_never_a_shifted_score(photos, extra):
    backend = CountingBackend(extra, when=lambda n: True)
    results = list(judge_with(backend).score_many(samples(photos, 3)))
    assert all(r.error.stage == "model" for r in results)
    assert all(f"backend returned {1 + extra} answers for 1 requests" in r.error.message for r in results)
    assert all(r.scores is None for r in results)


def test_repair_that_raises_is_a_model_error(photos):
    backend = ScriptedBackend({"answers": {"sc": "no json here", "pq": PQ_OK}, "constrained": {"sc": "!raise boom"}})
    result = judge_with(backend).score(photos["coffee"], photos["coffee_blur"], "Blur it")
    assert result.error.stage == "model"
    assert "no JSON object" in result.error.message and "constrained repair failed" in result.error.message
    assert "boom" in result.error.message and result.scores is None


def test_repair_that_still_does_not_parse_is_a_parse_error(photos):
    backend = ScriptedBackend({"answers": {"sc": SC_OK, "pq": "garbage"}, "constrained": {"pq": "more garbage"}})
    result = judge_with(backend).score(photos["coffee"], photos["coffee_blur"], "Blur it")
    assert result.error.stage == "parse"
    assert "PQ answer" in result.error.message and "constrained repair also failed" in result.error.message
    assert result.scores is None and result.reward is None
    *first, repair = backend.calls
    assert not any(c["constrained"] for c in first)
    assert repair["constrained"] and [r.kind for r in repair["requests"]] == ["pq"]


def test_structured_off_reports_without_repair(photos):
    backend = ScriptedBackend({"answers": {"sc": "garbage", "pq": PQ_OK}})
    judge = Judge(backend, load_config(overrides={"generation": {"structured": "off"}}))
    result = judge.score(photos["coffee"], photos["coffee_blur"], "Blur it")
    assert result.error.stage == "parse" and "repair" not in result.error.message
    assert [c["constrained"] for c in backend.calls] == [False]


class FailSecondPass(ScriptedBackend):
    """Raises for the second-pass SC request of edit s1."""

    def generate(self, requests, generation, *, constrained):
        if any(r.seed == request_seed(42, "s1", 1, "sc") for r in requests):
            self.calls.append({"requests": list(requests), "constrained": constrained})
            raise RuntimeError("device lost")
        return super().generate(requests, generation, constrained=constrained)


def test_failure_in_the_second_pass_fails_the_edit(photos):
    """An edit whose second pass fails has no scores: a one-pass average would
    be a different judgment from the one asked for."""
    backend = FailSecondPass()
    judge = judge_with(backend, generation={"passes": 2, "temperature": 0.7})
    results = list(judge.score_many(samples(photos, 3)))
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert results[1].error.stage == "model" and "device lost" in results[1].error.message
    assert results[1].scores is None and len(results[1].sc) == 1  # the first pass's SC was judged
    assert len(results[0].pass_scores()) == 2
    record = results[1].to_record()
    assert record["status"] == "error" and record["reward"] is None and "passes" not in record


def exif_rotated_jpeg(photos, tmp_path):
    """A JPEG stored landscape with EXIF orientation 6 (viewers show it portrait)."""
    image = Image.open(photos["coffee"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_pil_images_get_the_same_exif_rotation_as_paths(photos, tmp_path):
    path = exif_rotated_jpeg(photos, tmp_path)
    backend = ScriptedBackend()
    judge = judge_with(backend)
    by_path = judge.score(photos["coffee"], path, "Rotate")
    by_pil = judge.score(Image.open(photos["coffee"]), Image.open(path), "Rotate")
    assert by_path.edited_size == by_pil.edited_size == (400, 600)
    sc_path, sc_pil = [r for c in backend.calls for r in c["requests"] if r.kind == "sc"]
    assert [image_digest(i) for i in sc_path.images] == [image_digest(i) for i in sc_pil.images]
    assert load_image(Image.open(path)).size == (400, 600)


def test_batch_size_is_not_part_of_the_judge_hash(photos):
    """Documented decision: batching does not change what is asked of the model,
    so results of different --batch-size resume into each other."""
    a = Judge(ScriptedBackend(), load_config(overrides={"batch_size": 1}))
    b = Judge(ScriptedBackend(), load_config(overrides={"batch_size": 16}))
    assert a.judge_hash == b.judge_hash and a.config_hash == b.config_hash
