"""The trainer adapters called the way their frameworks call them, against a
real server; the service's grouping for prefix caching, in process."""

from __future__ import annotations

import asyncio
import base64
import math
import time

import numpy as np
import pytest
import torch

from serve_helpers import expected_echo, item_image, png_bytes, start

from spatialreward.adapters import evaluate_images, flow_grpo_reward
from spatialreward.client import encode_image


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("adapters"), {"echo": True})
    yield server
    assert server.stop() == 0


def test_flow_grpo_reward_fn_with_a_float_tensor_batch(server):
    """flow_grpo calls reward_fn(images, prompts, metadata) with images a float
    tensor N x C x H x W in [0, 1]; it wants one float per image."""
    edited = [item_image(k) for k in range(4)]
    images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in edited])
    prompts = [f"item {k}" for k in range(4)]
    metadata = [{"source": item_image(77)} for _ in range(3)] + [{"source": b"not an image"}]
    fn = flow_grpo_reward(server.url)
    rewards, info = fn(images, prompts, metadata)
    assert rewards.dtype == np.float32 and rewards.shape == (4,)
    for k in range(3):  # float -> uint8 exactly as the sampler saved it: the same pixels, the same reward
        assert rewards[k] == pytest.approx(expected_echo(k, edited[k])["reward"], abs=1e-6)
        assert info["errors"][k] is None
    assert math.isnan(rewards[3]) and info["errors"][3]["stage"] == "input"  # never 0.0
    # uint8 NHWC arrays and PIL lists work too; metadata["instruction"] wins over the prompt
    arrays = np.stack([np.asarray(im) for im in edited[:2]])
    rewards, _ = fn(arrays, ["ignored", "ignored"], [{"source": item_image(77), "instruction": f"item {k}"} for k in range(2)])
    assert rewards.tolist() == pytest.approx([expected_echo(k, edited[k])["reward"] for k in range(2)], abs=1e-6)
    # the editing variants pass the source images as ref_images, in the same layout as images
    refs = torch.stack([torch.from_numpy(np.array(item_image(77))).permute(2, 0, 1).float() / 255] * 4)
    rewards, _ = fn(images, prompts, [{} for _ in range(4)], ref_images=refs)
    assert rewards.tolist() == pytest.approx([expected_echo(k, edited[k])["reward"] for k in range(4)], abs=1e-6)
    with pytest.raises(ValueError, match="source"):
        fn(edited[:1], ["item 1"], [{}])


def test_released_evaluate_images_function(server):
    scores, rewards, reasoning, meta = evaluate_images(
        [[item_image(5)], [item_image(5)]], [item_image(1), b"junk"],
        [{"instruction": "item 1", "k": "a"}, {"instruction": "item 2"}], proxy_host="127.0.0.1",
        proxy_port=server.port)
    assert rewards[0] == pytest.approx(expected_echo(1, item_image(1))["reward"])
    assert rewards[1] is None and scores[1] is None  # a failed item is never 0.0
    assert meta[0] == {"instruction": "item 1", "k": "a", "original_index": 0}
    assert meta[1]["original_index"] == 1 and meta[1]["error"]["stage"] == "input"
    assert reasoning[1].startswith("error (input)")


def _recording(client) -> list[dict]:
    """The JSON payloads ``client`` posts (the posts still go to the server)."""
    sent = []
    post = client._http.post

    def recorded(*args, **kwargs):
        sent.append(kwargs["json"])
        return post(*args, **kwargs)

    async def recorded_async(*args, **kwargs):
        sent.append(kwargs["json"])
        return await post(*args, **kwargs)

    client._http.post = recorded_async if asyncio.iscoroutinefunction(post) else recorded
    return sent


def test_evaluate_sends_every_input_image_in_order(server):
    """The released call shape: input_images[i] is the list of sample i's sources;
    all of them go, in their order (not only the first)."""
    from spatialreward.client import AsyncRewardClient, RewardClient

    refs = [item_image(70 + k) for k in range(3)]
    input_images = [refs[:1], refs[:2], refs, refs[0]]  # a bare image is one source too
    edited = [item_image(k) for k in range(4)]
    metas = [{"instruction": f"item {k}"} for k in range(4)]
    with RewardClient(server.url) as client:
        sent = _recording(client)
        scores, rewards, reasoning, meta = client.evaluate(input_images, edited, metas)
        assert rewards == [pytest.approx(expected_echo(k, edited[k])["reward"]) for k in range(4)]
        [payload] = sent
        wire = [item["source"] for item in payload["items"]]
        assert wire[0] == encode_image(refs[0]) == wire[3]  # one source: one string, as before
        assert wire[1] == [encode_image(r) for r in refs[:2]] and wire[2] == [encode_image(r) for r in refs]
        results = client.score([{"source": refs, "edited": edited[0], "instruction": "item 0"},
                                (tuple(refs[:2]), edited[1], "item 1")])
        assert [r.sources for r in results] == [3, 2] and all(r.ok for r in results)
        # too many or no sources: that sample is an input error (never a score), the others are judged
        _, rewards_bad, _, meta_bad = client.evaluate([[refs[0]] * 9, [], [refs[0]]], edited[:3], metas[:3])
        assert rewards_bad[:2] == [None, None] and rewards_bad[2] is not None
        assert all("1 to 8" in m["error"]["message"] and m["error"]["stage"] == "input" for m in meta_bad[:2])
        assert len(sent) == 3 and len(sent[2]["items"]) == 1  # the bad samples were not sent

    async def go():
        async with AsyncRewardClient(server.url) as client:
            sent = _recording(client)
            answer = await client.evaluate(input_images, edited, metas)
            return sent, answer

    sent, (_, rewards_async, _, _) = asyncio.run(go())
    assert rewards_async == rewards and [i["source"] for i in sent[0]["items"]] == wire


def test_adapters_take_several_sources(server):
    """flow_grpo: metadata[i]["source"] a list, or ref_images with K sources per
    item (N x K x C x H x W, or a list of per-item lists); evaluate_images as evaluate."""
    edited = [item_image(k) for k in range(2)]
    refs = [item_image(80), item_image(81)]
    tensor = lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255  # noqa: E731
    fn = flow_grpo_reward(server.url)
    sent = _recording(fn.client)
    want = [pytest.approx(expected_echo(k, edited[k])["reward"], abs=1e-6) for k in range(2)]
    rewards, _ = fn(edited, ["item 0", "item 1"], [{"source": refs}, {"source": refs[:1]}])
    assert rewards.tolist() == want
    stacked = torch.stack([torch.stack([tensor(r) for r in refs])] * 2)  # N x K x C x H x W
    rewards, _ = fn(edited, ["item 0", "item 1"], [{}, {}], ref_images=stacked)
    assert rewards.tolist() == want
    rewards, _ = fn(edited, ["item 0", "item 1"], [{}, {}], ref_images=[[tensor(r) for r in refs], tensor(refs[0])])
    assert rewards.tolist() == want
    two = [encode_image(r) for r in refs]
    assert [i["source"] for i in sent[0]["items"]] == [two, two[0]]
    assert [i["source"] for i in sent[1]["items"]] == [two, two]  # float -> uint8 exactly: the same PNGs
    assert [i["source"] for i in sent[2]["items"]] == [two, two[0]]
    scores, rewards, _, _ = evaluate_images([refs, refs[:1]], edited, [{"instruction": f"item {k}"} for k in range(2)],
                                            proxy_host="127.0.0.1", proxy_port=server.port)
    assert rewards == want


def test_images_are_sent_losslessly(tmp_path):
    jpeg = tmp_path / "a.jpg"
    item_image(3).save(jpeg, quality=70)
    assert base64.b64decode(encode_image(jpeg)) == jpeg.read_bytes()  # a file goes as its bytes
    assert base64.b64decode(encode_image(item_image(3))) == png_bytes(item_image(3))  # PIL as PNG


def keep_busy(judge, backend) -> None:
    """Submit one edit ("busy 999") and wait until the model is inside its first call."""
    from spatialreward.sample import Sample

    judge.submit(Sample(id="busy", source=png_bytes(item_image(1)), edited=png_bytes(item_image(2)),
                        instruction="busy 999"))
    deadline = time.monotonic() + 10
    while not backend.calls:
        assert time.monotonic() < deadline, "the model never started"
        time.sleep(0.005)


def test_items_sharing_source_and_instruction_are_submitted_adjacent():
    """The released proxy's instruction grouping: the engine takes the SC
    requests of one source+instruction group one after another. The engine is
    held busy until every item is queued (as under load, where grouping pays):
    which item finishes preparing first must not decide the order."""
    import threading

    from spatialreward.judge import Judge
    from spatialreward.config import load_config
    from spatialreward.serve.protocol import RewardRequest
    from spatialreward.serve.serving import RewardService
    from spatialreward.testing.scripted import ScriptedBackend

    release = threading.Event()

    class Held(ScriptedBackend):
        def generate(self, requests, generation, *, constrained):
            answers = super().generate(requests, generation, constrained=constrained)
            assert release.wait(30), "the test never released the engine"
            return answers

    backend = Held({"echo": True})
    judge = Judge(backend, load_config(None, {"batch_size": 1}))
    service = RewardService(judge)
    src = {name: base64.b64encode(png_bytes(item_image(n))).decode() for name, n in (("A", 1), ("B", 2))}
    order = [("A", "item 1"), ("B", "item 2"), ("A", "item 1"), ("B", "item 2"), ("A", "item 3"), ("A", "item 1")]
    request = RewardRequest.model_validate({"items": [
        {"id": str(i), "source": src[s], "edited": base64.b64encode(png_bytes(item_image(10 + i))).decode(),
         "instruction": t} for i, (s, t) in enumerate(order)]})

    def release_when_queued():
        deadline = time.monotonic() + 30
        # the busy sample's PQ plus the six items' SC and PQ
        while judge.queued < 13 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()

    try:
        keep_busy(judge, backend)
        releaser = threading.Thread(target=release_when_queued)
        releaser.start()
        results = asyncio.run(service.score(request))
        releaser.join()
    finally:
        release.set()
        judge.close()
    assert [r["id"] for r in results] == [str(i) for i in range(6)]  # answers in request order
    sc_calls = [c["requests"][0].prompt.rsplit("Editing instruction: ", 1)[-1].strip()
                for c in backend.calls if c["requests"][0].kind == "sc"]
    assert sc_calls == ["busy 999", "item 1", "item 1", "item 1", "item 2", "item 2", "item 3"]
    assert service.pending == 0


def test_items_of_concurrent_requests_share_batches():
    """Dynamic batching across clients: one generate() call holds items of two requests."""
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.serve.protocol import RewardRequest
    from spatialreward.serve.serving import RewardService
    from spatialreward.testing.scripted import ScriptedBackend

    # A batch of 16 takes what is queued, oldest first, whichever request it came from.
    backend = ScriptedBackend({"echo": True, "delay_s": 0.2})
    judge = Judge(backend, load_config(None, {"batch_size": 16}))
    service = RewardService(judge)
    source = base64.b64encode(png_bytes(item_image(1))).decode()

    def request(first: int) -> RewardRequest:
        return RewardRequest.model_validate({"items": [
            {"source": source, "edited": base64.b64encode(png_bytes(item_image(k))).decode(), "instruction": f"item {k}"}
            for k in range(first, first + 4)]})

    async def both():
        return await asyncio.gather(service.score(request(100)), service.score(request(200)))

    try:
        keep_busy(judge, backend)  # while that call sleeps, both requests' items queue up
        first, second = asyncio.run(both())
    finally:
        judge.close()
    assert [r["reward"] for r in first] == [pytest.approx(expected_echo(k, item_image(k))["reward"]) for k in range(100, 104)]
    assert [r["reward"] for r in second] == [pytest.approx(expected_echo(k, item_image(k))["reward"]) for k in range(200, 204)]
    mixed = [c for c in backend.calls
             if {r.prompt.rsplit(" ", 1)[-1].strip()[:1] for r in c["requests"] if r.kind == "sc"} >= {"1", "2"}]
    assert mixed, [len(c["requests"]) for c in backend.calls]


def test_closing_the_judge_fails_queued_items_instead_of_hanging_them():
    from spatialreward.config import load_config
    from spatialreward.judge import Judge
    from spatialreward.sample import Sample
    from spatialreward.testing.scripted import ScriptedBackend

    backend = ScriptedBackend({"echo": True, "delay_s": 0.2})
    judge = Judge(backend, load_config(None, {"batch_size": 1}))
    futures = judge.submit_many([Sample(id=str(k), source=png_bytes(item_image(1)), edited=png_bytes(item_image(k)),
                                        instruction=f"item {k}") for k in range(4)])
    deadline = time.monotonic() + 5
    while not backend.calls:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    judge.close()
    results = [f.result(timeout=20) for f in futures]
    failed = [r for r in results if not r.ok]
    assert failed and all(r.error.stage == "model" and "closed" in r.error.message for r in failed)
    with pytest.raises(RuntimeError, match="closed"):
        judge.submit(Sample(id="late", source=png_bytes(item_image(1)), edited=png_bytes(item_image(9)),
                            instruction="late"))
