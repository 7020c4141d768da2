"""The asynchronous pipeline: each distinct image prepared (and PNG-encoded)
once, a slow answer at the head never stops the work behind it, one sick
request fails alone, and no malformed sample can hang or crash a run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_jsonl
from fake_openai import FakeOpenAI
from serve_helpers import item_image, png_bytes
from spatialreward.backends import openai_backend
from spatialreward.backends.base import Answer
from spatialreward.config import Generation, load_config
from spatialreward.judge import Judge
from spatialreward.manifest import read_manifest
from spatialreward.sample import Sample
from spatialreward.testing.scripted import PQ_OK, SC_OK, ScriptedBackend

FAST = dict(backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture()
def server():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def openai_judge(fake, **options) -> Judge:
    backend = openai_backend.OpenAIBackend.load("SpatialReward/SpatialReward-8B", generation=Generation(),
                                                base_urls=[fake.url], **{**FAST, **options})
    return Judge(backend, load_config())


def test_each_distinct_image_is_encoded_once(server, photos, tmp_path, monkeypatch):
    """The edited image serves SC and PQ from one PNG encoding; a group's shared
    source is encoded once for all its candidates."""
    judge = openai_judge(server)
    encoded = []
    real = openai_backend.png_data_url
    monkeypatch.setattr(openai_backend, "png_data_url", lambda image: encoded.append(image.size) or real(image))
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "one", "source": str(photos["astronaut"]), "edited": str(photos["astronaut_mirror"]),
         "instruction": "Mirror it"},
        {"id": "grp", "source": str(photos["coffee"]),
         "edited": [str(photos["coffee_gray"]), str(photos["coffee_blur"]), str(photos["coffee_red_square"])],
         "instruction": "Change it"},
    ])
    try:
        results = list(judge.score_many(read_manifest(manifest)))
    finally:
        judge.close()
    assert [r.ok for r in results] == [True] * 4
    assert len(server.chat_requests()) == 8  # SC and PQ of 4 edits
    assert len(encoded) == 2 + 1 + 3, encoded  # one edit (2), the group's source (1), its candidates (3)
    assert judge.images.prepared == 6


def test_a_poison_request_fails_alone_through_the_judge(server, photos):
    """An edit whose request the engine answers with HTTP 500 every time fails
    alone: every other edit of the run is judged, and the only endpoint stays
    in the rotation. Repeated to catch the timing."""
    server.fail_when = lambda body: "poison" in body["messages"][0]["content"][-1]["text"]
    judge = openai_judge(server, retries=2, concurrency=8)
    try:
        for _ in range(3):
            samples = [Sample(id=f"e{k}", source=png_bytes(item_image(1, 64)), edited=png_bytes(item_image(k, 64)),
                              instruction="poison it" if k == 7 else f"edit {k}") for k in range(40)]
            results = list(judge.score_many(samples))
            failed = [r.sample.id for r in results if not r.ok]
            assert failed == ["e7"], failed
            assert results[7].error.stage == "model" and "HTTP 500" in results[7].error.message
            assert judge.backend.pool.live() == judge.backend.pool.endpoints
    finally:
        judge.close()


class HeadBlocker:
    """An async engine whose first request answers only once `others` requests
    behind it have been answered: a pipeline that waits for its head deadlocks."""

    dtype, fingerprint, model_id = "none", "head-blocker", "head-blocker"
    capacity = 8

    def __init__(self, others: int):
        self.others = others
        self.answered = 0
        self.first_seen = False
        self.released = None

    async def agenerate(self, request, generation, *, constrained):
        if self.released is None:
            self.released = asyncio.Event()
        text = SC_OK if request.kind == "sc" else PQ_OK
        if not self.first_seen:
            self.first_seen = True
            await asyncio.wait_for(self.released.wait(), 20)
            return Answer(text, 1, True)
        await asyncio.sleep(0.001)
        self.answered += 1
        if self.answered >= self.others:
            self.released.set()
        return Answer(text, 1, True)


def test_a_slow_head_does_not_stop_the_work_behind_it():
    backend = HeadBlocker(others=150)  # 75 edits' requests behind the head
    judge = Judge(backend, load_config())
    samples = [Sample(id=f"e{k}", source=png_bytes(item_image(1)), edited=png_bytes(item_image(k)),
                      instruction=f"edit {k}") for k in range(120)]
    started = time.monotonic()
    try:
        results = list(judge.score_many(samples))
    finally:
        judge.close()
    assert [r.sample.id for r in results] == [s.id for s in samples]  # still in input order
    assert all(r.ok for r in results)
    assert time.monotonic() - started < 15  # the head waited for work behind it: it was never a barrier


def malformed_samples(tmp: Path) -> list[Sample]:
    """Hundreds of broken edits of every kind the Python API can be handed."""
    good = png_bytes(item_image(3))
    folder = tmp / "a-folder"
    folder.mkdir()
    text = tmp / "text.png"
    text.write_text("not an image")
    truncated = png_bytes(item_image(5, 64))[:60]
    huge_ratio = png_bytes(Image.new("RGB", (4000, 10)))
    sixteen = Image.new("I;16", (8, 8))
    bad_values = [None, 123, 4.5, b"", b"garbage", truncated, str(tmp / "missing.png"), str(folder), str(text),
                  huge_ratio, Path("/dev/null"), object(), sixteen, ["list.png"], {"a": 1}, bytearray(b"x")]
    bad_instructions = [None, "", "   ", 42, ["a"], b"bytes", "ok"]
    out = []
    k = 0
    for value in bad_values:
        for instruction in bad_instructions:
            for role in ("source", "edited"):
                sample = Sample(id=f"f{k}", source=good, edited=good, instruction=instruction)
                setattr(sample, role, value)
                out.append(sample)
                k += 1
    return out


def test_fuzz_every_malformed_sample_resolves_as_an_error(tmp_path):
    samples = malformed_samples(tmp_path)
    assert len(samples) >= 200
    backend = ScriptedBackend({"record": False})
    judge = Judge(backend, load_config(None, {"batch_size": 4}))
    try:
        started = time.monotonic()
        results = list(judge.score_many(samples))
        futures = [judge.submit(s) for s in samples[:50]]
        submitted = [f.result(timeout=30) for f in futures]
    finally:
        judge.close()
    assert time.monotonic() - started < 60
    assert len(results) == len(samples)
    for result in results + submitted:
        if result.sample.instruction == "ok" and result.ok:
            continue  # e.g. an I;16 image is converted, not refused
        assert not result.ok, result.sample
        assert result.error.stage in ("input", "model"), result.error
        assert result.reward is None and result.error.message
    record = results[0].to_record()
    assert record["status"] == "error" and json.dumps(record)


def test_close_is_final():
    judge = Judge(ScriptedBackend(), load_config())
    assert judge.score(png_bytes(item_image(1)), png_bytes(item_image(2)), "x").ok
    judge.close()
    judge.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        judge.score(png_bytes(item_image(1)), png_bytes(item_image(2)), "x")
    with pytest.raises(RuntimeError, match="closed"):
        judge.submit(Sample(id="x", source=png_bytes(item_image(1)), edited=png_bytes(item_image(2)), instruction="x"))


def test_fuzz_the_server_answers_every_malformed_request(tmp_path):
    """Hundreds of malformed requests to a real server: each is answered within
    seconds (422 for a body that breaks the protocol, 200 with item errors for
    bad images or instructions), nothing hangs, and the server stays ready."""
    import base64 as b64
    import random

    import httpx

    from serve_helpers import start

    server = start(tmp_path, {"echo": True, "record": False}, "--batch-size", "4")
    good = b64.b64encode(png_bytes(item_image(3))).decode()
    bad_values = [None, 1, 1.5, True, "", "not base64!", b64.b64encode(b"garbage").decode(),
                  b64.b64encode(png_bytes(item_image(5, 64))[:60]).decode(), "data:image/png;base64,",
                  b64.b64encode(png_bytes(Image.new("RGB", (4000, 10)))).decode(), [], [good] * 9, [good, None],
                  {"a": 1}, "A" * 5000]
    bad_instructions = [None, "", "   ", 7, ["x"], "ok", "{instruction} \u0000"]
    rng = random.Random(0)
    bodies = []
    for value in bad_values:
        for instruction in bad_instructions:
            for field in ("source", "edited"):
                item = {"source": good, "edited": good, "instruction": instruction, field: value}
                bodies.append(json.dumps({"items": [item, {"source": good, "edited": good, "instruction": "fine"}]}))
    bodies += ["", "{", "[]", "null", '{"items": []}', '{"items": "x"}', '{"items": [1]}', '{"itemz": []}',
               json.dumps({"items": [{"source": good}]}), json.dumps({"items": [{}] * 3})]
    rng.shuffle(bodies)
    assert len(bodies) >= 200
    statuses = {}
    try:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            started = time.monotonic()
            for body in bodies:
                response = client.post("/v1/rewards", content=body.encode(),
                                       headers={"content-type": "application/json"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    results = response.json()["results"]
                    assert results[-1]["status"] == "ok"  # the good item beside a bad one is judged
                    for result in results[:-1]:
                        if result["status"] == "error":
                            assert result["error"]["stage"] in ("input", "model") and result["reward"] is None
            assert time.monotonic() - started < 120
            assert client.get("/ready").json()["ready"] is True
    finally:
        assert server.stop() == 0
    assert set(statuses) <= {200, 422}, statuses
    assert statuses.get(200) and statuses.get(422)
