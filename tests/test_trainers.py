"""The trainer drop-ins called the way flow_grpo and verl-omni call them, against a
real `spatialreward serve` (scripted backend).

flow_grpo's calling code is reproduced here, reduced to what touches the reward:
``flow_grpo/rewards.py`` ``multi_score`` (how it builds and calls each scorer), the
reward step of ``scripts/train_qwenimage_edit_plus.py`` (executor.submit, unpack,
tensors, ``avg`` repeated over timesteps) and the ``grpo`` branch of
``flow_grpo/stat_tracking.py`` ``PerPromptStatTracker.update``. verl-omni's is
``VisualRewardManager.run_single``'s keyword call, many samples concurrently."""

from __future__ import annotations

import asyncio
import io
import math
import sys
import time
import types
from concurrent import futures

import numpy as np
import pytest
import torch
from PIL import Image

from serve_helpers import expected_echo, item_image, start

from spatialreward.integrations import flow_grpo as sr_flow_grpo
from spatialreward.integrations import verl_omni
from spatialreward.policy import ItemsFailed
from spatialreward.testing.scripted import image_digest

BROKEN = 40  # the edited image the script answers PQ with garbage for: a parse failure at that item only


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    script = {"echo": True, "by_instruction": {"fail me": {"sc": "not a judgment"}},
              "by_image": {image_digest(item_image(BROKEN)): {"pq": "not a judgment either"}}}
    server = start(tmp_path_factory.mktemp("trainers"), script)
    yield server
    assert server.stop() == 0


# ---- flow_grpo, as its code calls a scorer -------------------------------------------------------

def jpeg_compressibility():
    """A flow_grpo scorer built with no arguments: fn(images, prompts, metadata) -> (scores, meta)."""
    def _fn(images, prompts, metadata):
        arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
        sizes = []
        for array in arrays:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=95)
            sizes.append(buffer.tell() / 1000)
        return -np.array(sizes) / 500, {}
    return _fn


def flow_grpo_multi_score(device, score_dict, score_functions):
    """flow_grpo.rewards.multi_score's calling pattern, with the documented one-line
    change (the ``spatialreward`` branch) and ``score_functions`` as its registry."""
    score_fns = {}
    for score_name, weight in score_dict.items():
        factory = score_functions[score_name]
        score_fns[score_name] = factory(device) if 'device' in factory.__code__.co_varnames else factory()

    def _fn(images, prompts, metadata, ref_images=None, only_strict=True):
        total_scores = []
        score_details = {}
        for score_name, weight in score_dict.items():
            if score_name == "image_similarity":
                scores, rewards = score_fns[score_name](images, ref_images)
            elif score_name == "spatialreward": scores, rewards = score_fns[score_name](images, prompts, metadata, ref_images)  # noqa: E701,E501
            else:
                scores, rewards = score_fns[score_name](images, prompts, metadata)
            score_details[score_name] = scores
            weighted_scores = [weight * score for score in scores]
            if not total_scores:
                total_scores = weighted_scores
            else:
                total_scores = [total + weighted for total, weighted in zip(total_scores, weighted_scores)]
        score_details['avg'] = total_scores
        return score_details, {}

    return _fn


def per_prompt_advantages(prompts, rewards, global_std=False):
    """PerPromptStatTracker(global_std).update(prompts, rewards) (type='grpo', one epoch)."""
    prompts = np.array(prompts)
    rewards = np.array(rewards, dtype=np.float64)
    advantages = np.empty_like(rewards) * 0.0
    for prompt in np.unique(prompts):
        prompt_rewards = rewards[prompts == prompt]
        mean = np.mean(prompt_rewards, axis=0, keepdims=True)
        if global_std:
            std = np.std(rewards, axis=0, keepdims=True) + 1e-4
        else:
            std = np.std(prompt_rewards, axis=0, keepdims=True) + 1e-4
        advantages[prompts == prompt] = (prompt_rewards - mean) / std
    return advantages


def trainer_reward_step(reward_fn, executor, images, prompts, prompt_metadata, ref_images, num_train_timesteps=2):
    """train_qwenimage_edit_plus.py's sampling loop, the reward part."""
    rewards = executor.submit(reward_fn, images, prompts, prompt_metadata, ref_images, only_strict=False)
    time.sleep(0)
    rewards, reward_metadata = rewards.result()
    rewards = {key: torch.as_tensor(value).float() for key, value in rewards.items()}
    rewards["ori_avg"] = rewards["avg"]
    rewards["avg"] = rewards["avg"].unsqueeze(1).repeat(1, num_train_timesteps)
    return {key: value.cpu().numpy() for key, value in rewards.items()}, reward_metadata


# A batch as the edit trainer samples it: two prompts (groups of 3 and 2, each with its own
# source image) and a prompt whose edit cannot be judged; item 1's edited image fails too.
EDITED = [0, BROKEN, 2, 3, 4, 5]
INSTRUCTIONS = ["item 3", "item 3", "item 3", "item 7", "item 7", "fail me"]
SOURCES = [70, 70, 70, 71, 71, 72]
FAILED = [1, 5]


def batch():
    images = torch.stack([torch.from_numpy(np.array(item_image(k))).permute(2, 0, 1).float() / 255 for k in EDITED])
    ref_images = [item_image(s) for s in SOURCES]  # the trainer's resized PIL source images
    prompt_metadata = [{"prompt": p, "ref_image": f"src/{s}.png"} for p, s in zip(INSTRUCTIONS, SOURCES)]
    prompt_with_image_paths = [f"{p}_src/{s}.png" for p, s in zip(INSTRUCTIONS, SOURCES)]  # what the tracker groups by
    return images, list(INSTRUCTIONS), prompt_metadata, ref_images, prompt_with_image_paths


def expected(i):
    return expected_echo(int(INSTRUCTIONS[i].split()[1]), item_image(EDITED[i]))["reward"]


@pytest.fixture(scope="module")
def executor():
    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        yield pool


@pytest.fixture
def fake_flow_grpo(monkeypatch):
    """`flow_grpo.rewards` importable, with its multi_score (the reproduction) and one scorer."""
    package = types.ModuleType("flow_grpo")
    rewards = types.ModuleType("flow_grpo.rewards")
    rewards.multi_score = lambda device, score_dict: flow_grpo_multi_score(
        device, score_dict, {"jpeg_compressibility": jpeg_compressibility})
    package.rewards = rewards
    monkeypatch.setitem(sys.modules, "flow_grpo", package)
    monkeypatch.setitem(sys.modules, "flow_grpo.rewards", rewards)


def test_flow_grpo_nan_default_through_the_wrapper_with_another_scorer(server, executor, fake_flow_grpo, caplog):
    """The import-only change: our multi_score, "spatialreward" next to a flow_grpo
    scorer; a failed item is NaN at its index only, reported, logged; masked, the
    advantages are finite and the valid items' are their group's."""
    images, prompts, metadata, ref_images, tracked = batch()
    reward_fn = sr_flow_grpo.multi_score("cpu", {"spatialreward": 1.0, "jpeg_compressibility": 0.5}, url=server.url)
    with caplog.at_level("WARNING", logger="spatialreward.integrations.flow_grpo"):
        rewards, reward_metadata = trainer_reward_step(reward_fn, executor, images, prompts, metadata, ref_images)
    ours, avg = rewards["spatialreward"], rewards["ori_avg"]
    assert [i for i in range(6) if math.isnan(ours[i])] == FAILED
    assert [i for i in range(6) if math.isnan(avg[i])] == FAILED
    jpeg = jpeg_compressibility()(images, prompts, metadata)[0]
    for i in set(range(6)) - set(FAILED):
        assert ours[i] == pytest.approx(expected(i), abs=1e-6)
        assert avg[i] == pytest.approx(expected(i) + 0.5 * jpeg[i], abs=1e-5)
    meta = reward_metadata["spatialreward"]
    assert meta["failed"] == FAILED and meta["failed_count"] == 2 and meta["on_error"] == "nan"
    assert meta["errors"][1]["stage"] == "parse" and meta["errors"][5]["stage"] == "parse"
    assert "2 of 6 items could not be judged" in caplog.text
    # the user's mask before the per-prompt advantages: the failed items get none
    valid = ~np.isnan(rewards["avg"][:, 0])
    advantages = np.zeros_like(rewards["avg"])
    advantages[valid] = per_prompt_advantages(np.array(tracked)[valid], rewards["avg"][valid])
    assert np.isfinite(advantages).all() and (advantages[FAILED] == 0).all()
    assert advantages[[0, 2], 0].sum() == pytest.approx(0, abs=1e-9)  # group "item 3" without item 1


@pytest.mark.parametrize("door", ["wrapper", "edited multi_score"])
def test_flow_grpo_neutral_gives_the_failed_item_zero_advantage_and_no_nan(server, executor, door):
    images, prompts, metadata, ref_images, tracked = batch()
    if door == "wrapper":
        reward_fn = sr_flow_grpo.multi_score("cpu", {"spatialreward": 1.0}, url=server.url, on_error="neutral")
    else:  # flow_grpo's own multi_score, with the scorer registered and the one-line change
        registry = {"spatialreward": lambda device: sr_flow_grpo.spatialreward_score(
            device, url=server.url, on_error="neutral")}
        reward_fn = flow_grpo_multi_score("cpu", {"spatialreward": 1.0}, registry)
    rewards, reward_metadata = trainer_reward_step(reward_fn, executor, images, prompts, metadata, ref_images)
    assert np.isfinite(rewards["avg"]).all()
    group = [expected(0), expected(2)]
    assert rewards["ori_avg"][1] == pytest.approx(sum(group) / 2, abs=1e-6)  # its group's mean
    valid = [expected(i) for i in range(5) if i != 1]
    assert rewards["ori_avg"][5] == pytest.approx(sum(valid) / 4, abs=1e-6)  # alone in its group: the batch's mean
    for global_std in (False, True):
        advantages = per_prompt_advantages(tracked, rewards["avg"], global_std)
        assert np.isfinite(advantages).all()
        assert np.abs(advantages[FAILED]).max() < 1e-4
        assert np.abs(advantages[[0, 2, 3, 4]]).min() > 0.1  # the judged items still carry a signal
    if door == "wrapper":
        meta = reward_metadata["spatialreward"]
        assert meta["failed"] == FAILED and sorted(meta["neutral"]) == FAILED
    else:
        assert reward_metadata == {}  # flow_grpo's multi_score drops the scorers' metadata


def test_flow_grpo_raise_names_the_item_and_none_gives_none(server, executor):
    images, prompts, metadata, ref_images, _ = batch()
    reward_fn = sr_flow_grpo.multi_score("cpu", {"spatialreward": 1.0}, url=server.url, on_error="raise")
    with pytest.raises(ItemsFailed, match=r"items 1, 5\); item 1: parse") as caught:
        trainer_reward_step(reward_fn, executor, images, prompts, metadata, ref_images)
    assert caught.value.failed == FAILED
    reward_fn = sr_flow_grpo.multi_score("cpu", {"spatialreward": 1.0}, url=server.url, on_error="none")
    details, meta = executor.submit(reward_fn, images, prompts, metadata, ref_images, only_strict=True).result()
    assert [i for i, s in enumerate(details["spatialreward"]) if s is None] == FAILED
    assert [i for i, s in enumerate(details["avg"]) if s is None] == FAILED
    assert details["avg"][0] == pytest.approx(expected(0), abs=1e-6)
    assert meta["spatialreward"]["failed_count"] == 2


# ---- verl-omni -----------------------------------------------------------------------------------

def chw_uint8(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def test_verl_omni_concurrent_calls_in_order_and_a_failed_sample(server, tmp_path, monkeypatch):
    """VisualRewardManager: ``await compute_score(data_source=, solution_image=,
    ground_truth=, extra_info=)`` per sample, the batch's samples concurrently."""
    from spatialreward import constants

    monkeypatch.setattr(constants, "SERVER_URL", server.url)  # SPATIALREWARD_URL, as read when spatialreward loads
    sources = []
    for s in (90, 91):
        path = tmp_path / f"source_{s}.png"
        item_image(s).save(path)
        sources.append(str(path))
    count, failing = 12, 7
    instructions = [("fail me" if k == failing else f"item {k}") for k in range(count)]

    async def run_batch(**extra):
        calls = [verl_omni.compute_score(
            data_source="spatial_edit", solution_image=chw_uint8(item_image(k)), ground_truth="",
            extra_info={"source": sources[k % 2], "prompt" if k % 3 else "instruction": instructions[k], "index": k,
                        "num_turns": None, "rollout_reward_scores": {}}, **extra) for k in range(count)]
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
            clients = len(verl_omni._clients[asyncio.get_running_loop()])
        finally:
            await verl_omni.close_clients()
        return results, clients

    results, clients = asyncio.run(run_batch(model_name="ignored"))
    assert clients == 1  # one shared client for the loop, not one per call
    for k, result in enumerate(results):
        assert set(result) == set(verl_omni.KEYS)  # the same keys on every sample: they become metrics
        if k == failing:
            assert math.isnan(result["score"]) and result["failed"] == 1.0 and math.isnan(result["sc"])
        else:
            want = expected_echo(k, item_image(k))
            assert result["score"] == pytest.approx(want["reward"], abs=1e-6) and result["failed"] == 0.0
            assert result["success"] == want["success"] and result["naturalness"] == want["naturalness"]
    # raise: the failed sample's call raises, naming it; the others still score
    results, _ = asyncio.run(run_batch(on_error="raise", server_url=server.url))
    assert isinstance(results[failing], ItemsFailed) and "index=7" in str(results[failing])
    assert all(isinstance(r, dict) for k, r in enumerate(results) if k != failing)
    # neutral is impossible per sample: refused at once
    with pytest.raises(ValueError, match="one sample"):
        asyncio.run(verl_omni.compute_score("d", chw_uint8(item_image(1)), "item 1", {"source": sources[0]},
                                            on_error="neutral"))

    # a sample's bad input (no source, an unreadable file) is that sample's failure, never an exception
    # that verl-omni's MultiVisualRewardManager would turn into 0.0: NaN and failed=1 (raise: ItemsFailed)
    async def bad(extra, **kw):
        try:
            return await verl_omni.compute_score("d", chw_uint8(item_image(1)), "item 1", extra,
                                                 server_url=server.url, **kw)
        finally:
            await verl_omni.close_clients()

    for extra in ({}, {"source": "/nonexistent/src.png"}):
        out = asyncio.run(bad(extra))
        assert math.isnan(out["score"]) and out["failed"] == 1.0
        with pytest.raises(ItemsFailed):
            asyncio.run(bad(extra, on_error="raise"))


def test_verl_omni_takes_several_sources_and_the_instruction_from_ground_truth(server):
    async def go():
        try:
            return await verl_omni.compute_score(
                data_source="d", solution_image=chw_uint8(item_image(4)), ground_truth="item 4",
                extra_info={"source_images": [chw_uint8(item_image(80)), {"bytes": _png(item_image(81))}]},
                server_url=server.url)
        finally:
            await verl_omni.close_clients()

    result = asyncio.run(go())
    assert result["failed"] == 0.0 and result["success"] == 4


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
