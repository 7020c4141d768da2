"""Flow-Factory on `spatialreward serve`: ``POST /compute`` as Flow-Factory's
``RemoteRewardClient`` speaks it (JSON, base64 PNGs, pointwise and groupwise),
the failure policies there (and their ``/metrics`` count), the drop-in reward
classes of ``spatialreward.integrations.flow_factory`` called as Flow-Factory
calls them, and 422s on malformed bodies. One real server process, scripted
backend: "item k" is judged (echo), "fail me" fails to parse."""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
import re
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import requests
import torch

from serve_helpers import expected_echo, item_image, png_bytes, start

from spatialreward.client import RewardClient
from spatialreward.integrations import flow_factory as ff
from spatialreward.policy import ItemsFailed

FAIL = "fail me"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("ff"), {"echo": True, "by_instruction": {FAIL: {"sc": "not a judgment"}}})
    yield server
    assert server.stop() == 0


# -- Flow-Factory's RemoteRewardClient, as it sends and reads (my_reward_remote.py) -----------

def image_to_b64(image) -> str:
    """Flow-Factory's ``_image_to_b64``: a PIL image as base64 PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def build_payload(prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs) -> dict:
    """Flow-Factory's ``_build_payload``: every key present, empty ones null."""
    return {
        "prompt": prompt,
        "image": [image_to_b64(i) for i in image] if image else None,
        "video": None if not video else [[image_to_b64(f) for f in v] for v in video],
        "condition_images": [[image_to_b64(i) for i in imgs] for imgs in condition_images]
        if condition_images else None,
        "condition_videos": None if not condition_videos else condition_videos,
        "kwargs": kwargs if kwargs else None,
    }


class RemoteRewardClient:
    """Flow-Factory's client: GET /health; POST /compute; ``error`` raises; ``data["rewards"]``."""

    def __init__(self, server_url: str, timeout: float = 60.0, retries: int = 3):
        self.url = server_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()

    def health_check(self) -> bool:
        return self.session.get(f"{self.url}/health", timeout=5.0).ok

    def post(self, payload: dict) -> requests.Response:
        return self.session.post(f"{self.url}/compute", json=payload, timeout=self.timeout)

    def compute(self, prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs):
        payload = build_payload(prompt, image, video, condition_images, condition_videos, **kwargs)
        for attempt in range(self.retries):
            try:
                r = self.post(payload)
                r.raise_for_status()
                data = r.json()
                if data.get("error"):
                    raise RuntimeError(f"Server error: {data['error']}")
                return data["rewards"]
            except requests.RequestException as e:
                if attempt == self.retries - 1:
                    raise RuntimeError(f"Failed to connect to {self.url}: {e}")
        raise RuntimeError("Unreachable")


def as_tensor(rewards) -> torch.Tensor:
    """What RemotePointwiseRewardModel / RemoteGroupwiseRewardModel return."""
    return torch.tensor(rewards, dtype=torch.float32)


def v1_rewards(url: str, prompts, images, conditions) -> list:
    items = [{"source": list(c), "edited": png_bytes(i), "instruction": p}
             for p, i, c in zip(prompts, images, conditions)]
    with RewardClient(url) as client:
        return [r.reward for r in client.score(items)]


def policy_failures(url: str, policy: str) -> float:
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("spatialreward_policy_failed_items_total{") and f'policy="{policy}"' in line \
                and 'route="/compute"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def group_advantages(rewards: torch.Tensor, groups: list) -> torch.Tensor:
    """GRPO's per-group advantage (r - mean) / (std + eps)."""
    advantages = torch.empty_like(rewards)
    for key in set(groups):
        index = torch.tensor([i for i, g in enumerate(groups) if g == key])
        values = rewards[index]
        std = values.std(unbiased=False) if len(values) > 1 else torch.tensor(0.0)
        advantages[index] = (values - values.mean()) / (std + 1e-4)
    return advantages


# -- (1) the remote protocol: rewards in request order, as /v1/rewards gives them -----------------

def test_remote_pointwise_batch_matches_v1_rewards(server):
    client = RemoteRewardClient(server.url)
    assert client.health_check()
    source_a, source_b = item_image(100), item_image(101)
    prompts = ["item 1", "item 2", "item 1", "item 4", "item 5"]
    images = [item_image(k) for k in range(5)]
    conditions = [[source_a], [source_b], [source_a], [source_a, source_b], [source_b]]  # 1 or 2 sources
    rewards = as_tensor(client.compute(prompt=prompts, image=images, condition_images=conditions))
    assert rewards.shape == (5,)
    assert rewards.tolist() == pytest.approx(v1_rewards(server.url, prompts, images, conditions), abs=1e-6)
    for k, prompt in enumerate(prompts):
        assert rewards[k].item() == pytest.approx(expected_echo(int(prompt.split()[1]), images[k])["reward"], abs=1e-5)

    answer = client.post(build_payload(prompts, images, condition_images=conditions)).json()
    assert answer["failed"] == [] and answer["on_error"] == "neutral" and len(answer["scores"]) == 5


def test_remote_groupwise_call_matches_v1_rewards(server):
    client = RemoteRewardClient(server.url)
    source = item_image(102)
    prompts = ["item 7"] * 4  # one group: one prompt, its condition images, several rollouts
    images = [item_image(20 + k) for k in range(4)]
    conditions = [[source]] * 4
    rewards = as_tensor(client.compute(prompts, images, condition_images=conditions, metadata='{"a": 1}'))
    assert rewards.tolist() == pytest.approx(v1_rewards(server.url, prompts, images, conditions), abs=1e-6)
    assert len(set(rewards.tolist())) > 1  # distinct rollouts, distinct rewards


# -- (2) a failed item under each policy ----------------------------------------------------------------

def policy_batch():
    """Items 2 (a truncated PNG) and 4 ("fail me": the answer does not parse) fail."""
    source_a, source_b = image_to_b64(item_image(110)), image_to_b64(item_image(111))
    images = [image_to_b64(item_image(30 + k)) for k in range(6)]
    images[2] = base64.b64encode(png_bytes(item_image(32))[:60]).decode()
    prompts = ["item 3", "item 3", "item 3", "item 3", FAIL, "item 9"]
    conditions = [[source_a]] * 5 + [[source_b]]
    groups = [(p, tuple(c)) for p, c in zip(prompts, conditions)]
    body = {"prompt": prompts, "image": images, "video": None, "condition_images": conditions,
            "condition_videos": None, "kwargs": None}
    return body, groups


@pytest.mark.parametrize("policy", ["neutral", "nan", "raise", "none"])
def test_failed_items_under_each_policy(server, policy):
    body, groups = policy_batch()
    before = policy_failures(server.url, policy)
    response = RemoteRewardClient(server.url).post({**body, "on_error": policy})
    assert response.status_code == 200
    data = response.json()
    assert data["failed"] == [2, 4] and data["on_error"] == policy
    assert [e["index"] for e in data["errors"]] == [2, 4]
    assert [e["stage"] for e in data["errors"]] == ["input", "parse"]
    assert policy_failures(server.url, policy) == before + 2
    if policy == "raise":
        assert data["error"] and "rewards" not in data
        with pytest.raises(RuntimeError, match="Server error"):  # Flow-Factory's client raises on it
            if data.get("error"):
                raise RuntimeError(f"Server error: {data['error']}")
        return
    if policy == "none":
        assert data["rewards"][2] is None and data["rewards"][4] is None
        return
    rewards = as_tensor(data["rewards"])
    valid = [0, 1, 3, 5]
    assert not any(math.isnan(rewards[i].item()) for i in valid)
    if policy == "nan":
        assert math.isnan(rewards[2].item()) and math.isnan(rewards[4].item())
        return
    # neutral: the group's mean (item 2); no valid item in its group: the batch's valid mean (item 4)
    assert rewards[2].item() == pytest.approx(rewards[[0, 1, 3]].mean().item(), abs=1e-6)
    assert rewards[4].item() == pytest.approx(rewards[valid].mean().item(), abs=1e-6)
    advantages = group_advantages(rewards, groups)
    assert not torch.isnan(advantages).any()
    assert advantages[2].item() == pytest.approx(0.0, abs=1e-4)
    assert advantages[4].item() == 0.0


def test_default_policy_is_neutral_and_all_failed_is_an_error(server):
    body, _ = policy_batch()
    data = RemoteRewardClient(server.url).post(body).json()  # no on_error: Flow-Factory's own body
    assert data["on_error"] == "neutral" and data["failed"] == [2, 4]
    assert all(isinstance(r, float) for r in data["rewards"])
    client = RemoteRewardClient(server.url)
    with pytest.raises(RuntimeError, match="Server error: .*neutral"):
        client.compute([FAIL, FAIL], [item_image(1), item_image(2)], condition_images=[[item_image(3)]] * 2)


def test_group_by_request(server):
    body, _ = policy_batch()
    data = RemoteRewardClient(server.url).post({**body, "group_by": "request"}).json()
    rewards = data["rewards"]
    mean = sum(rewards[i] for i in (0, 1, 3, 5)) / 4
    assert rewards[2] == pytest.approx(mean, abs=1e-6) and rewards[4] == pytest.approx(mean, abs=1e-6)


# -- (3) the reward classes, as Flow-Factory builds and calls them ---------------------------------

@dataclasses.dataclass(kw_only=True)
class RewardArguments:
    """Flow-Factory's ``RewardArguments`` (an ``ArgABC``): unknown YAML keys go to
    ``extra_kwargs``, read with ``config[key]``."""

    name: str = "default"
    reward_model: Optional[str] = None
    batch_size: int = 16
    device: Any = "cpu"
    dtype: Any = torch.float32
    extra_kwargs: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "RewardArguments":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra_kwargs={k: v for k, v in data.items() if k not in names})

    def __getitem__(self, key):
        if hasattr(self, key) and key != "extra_kwargs":
            return getattr(self, key)
        return self.extra_kwargs[key]


ACCELERATOR = SimpleNamespace(device=torch.device("cpu"))


def reward_config(server, reward_model: str, **extra) -> RewardArguments:
    return RewardArguments.from_dict({"name": "spatial", "reward_model": reward_model, "batch_size": 8,
                                      "server_url": server.url, "timeout": 60, "retry_attempts": 2, **extra})


def load(path: str):
    """Flow-Factory's ``get_reward_model_class``: a dotted path."""
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_pointwise_class_as_flow_factory_calls_it(server, caplog):
    cls = load("spatialreward.integrations.flow_factory.MyPointwiseRewardModel")
    assert cls is load("spatialreward.integrations.flow_factory.SpatialRewardPointwise")
    assert cls.required_fields == ("prompt", "condition_images", "image")
    model = cls(reward_config(server, "spatialreward.integrations.flow_factory.MyPointwiseRewardModel"), ACCELERATOR)
    assert (model.server_url, model.timeout, model.retry_attempts, model.on_error) == (server.url, 60.0, 2, "neutral")
    source = item_image(120)
    prompts = ["item 4", "item 4", FAIL, "item 4"]
    images = [item_image(40 + k) for k in range(4)]
    conditions = [[source] for _ in range(4)]  # per-sample lists of PIL images, as RewardProcessor passes them
    with caplog.at_level(logging.WARNING, logger="spatialreward.integrations.flow_factory"):
        output = model(prompt=prompts, image=images, condition_images=conditions)
    assert isinstance(output, ff.RewardModelOutput)
    assert output.rewards.dtype == torch.float32 and output.rewards.shape == (4,)
    want = v1_rewards(server.url, prompts, images, conditions)
    valid = [0, 1, 3]
    assert [output.rewards[i].item() for i in valid] == pytest.approx([want[i] for i in valid], abs=1e-6)
    assert output.rewards[2].item() == pytest.approx(sum(want[i] for i in valid) / 3, abs=1e-6)  # never 0.0
    assert output.extra_info["failed"] == [2] and output.extra_info["failed_count"] == 1
    assert output.extra_info["errors"][2]["stage"] == "parse"
    assert "1 of 4 samples could not be judged" in caplog.text

    nan_model = cls(reward_config(server, "x", on_error="nan"), ACCELERATOR)
    assert torch.isnan(nan_model(prompt=prompts, image=images, condition_images=conditions).rewards[2])
    raise_model = cls(reward_config(server, "x", on_error="raise"), ACCELERATOR)
    with pytest.raises(ItemsFailed) as caught:
        raise_model(prompt=prompts, image=images, condition_images=conditions)
    assert caught.value.failed == [2]
    with pytest.raises(ValueError, match="cannot be a reward tensor"):
        cls(reward_config(server, "x", on_error="none"), ACCELERATOR)
    with pytest.raises(ValueError, match="condition_images"):
        model(prompt=prompts, image=images)  # condition_images not in required_fields


def test_groupwise_class_ranks_the_group(server):
    cls = load("spatialreward.integrations.flow_factory.MyGroupwiseRewardModel")
    assert cls is ff.SpatialRewardGroupwise
    model = cls({"server_url": server.url, "timeout": 60, "retry_attempts": 2}, ACCELERATOR)  # a plain dict works too
    source = item_image(121)
    prompts = ["item 6"] * 4
    images = [item_image(50 + k) for k in range(4)]
    raw = v1_rewards(server.url, prompts, images, [[source]] * 4)
    output = model(prompt=prompts, image=images, condition_images=[[source]] * 4)
    order = sorted(range(4), key=lambda i: raw[i])
    assert output.rewards.tolist() == pytest.approx([order.index(i) / 3 for i in range(4)])  # the released ranks

    failing = model(prompt=prompts[:3] + [FAIL], image=images, condition_images=[[source]] * 4)
    ranks = failing.rewards.tolist()
    assert sorted(ranks[:3]) == [0.0, 0.5, 1.0] and ranks[3] == pytest.approx(0.5)  # the mean rank: zero advantage
    assert failing.extra_info["failed"] == [3] and failing.extra_info["raw_rewards"][3] is None


def test_unreachable_server_fails_at_construction():
    with pytest.raises(RuntimeError, match="cannot reach"):
        ff.MyPointwiseRewardModel({"server_url": "http://127.0.0.1:9", "retry_attempts": 1}, ACCELERATOR)


# -- (4) malformed bodies: 422 naming the field ---------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"condition_images": None}, "condition_images"),
    ({"image": None}, "image"),
    ({"image": "IMAGES"}, "image"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["item 1"]}, "image"),  # 1 prompt for 2 images
    ({"condition_images": [["X"]]}, "condition_images"),
    ({"condition_images": [[], ["X"]]}, "condition_images"),
    ({"video": [["X"]]}, "video"),
    ({"on_error": "zero"}, "on_error"),
    ({"reward": 1}, "reward"),
    ({"prompt": ["", "item 2"]}, "prompt"),
])
def test_malformed_body_is_422(server, change, field):
    body = build_payload(["item 1", "item 2"], [item_image(1), item_image(2)],
                         condition_images=[[item_image(3)], [item_image(3)]])
    response = RemoteRewardClient(server.url).post({**body, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(e["loc"][:2] == ["body", field] for e in detail), detail
    assert len(response.text) < 2000  # no base64 echoed back
    with pytest.raises(RuntimeError, match="Failed to connect"):  # Flow-Factory's client: raise_for_status
        client = RemoteRewardClient(server.url, retries=1)
        client.post = lambda payload: RemoteRewardClient.post(client, {**body, **change})
        client.compute(["x"])


def test_not_json_is_422(server):
    response = requests.post(server.url + "/compute", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert re.search(r"spatialreward_requests_total\{code=\"422\",route=\"/compute\"\}",
                     requests.get(server.url + "/metrics").text)
