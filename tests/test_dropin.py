"""The released reward client's call sites, with only the import switched to
ours, against a real `spatialreward serve` process: every constructor form, the
EditScore OmniGen2-RL loop (JSON-string metas, ``torch.tensor(rewards)``, group
advantages), a failed item under each failure policy, a server that is down,
and the server's own ``on_error`` field."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from collections import defaultdict

import httpx
import numpy as np
import pytest
import torch

from serve_helpers import expected_echo, free_port, item_image, png_bytes, start

from spatialreward.adapters import evaluate_images
from spatialreward.client import RewardClient, encode_image, parse_meta
from spatialreward.policy import ItemsFailed, apply_policy

FAIL = "fail me"  # the scripted model answers this instruction's SC request with something that is not a judgment


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("dropin"), {"echo": True, "by_instruction": {FAIL: {"sc": "no judgment"}}})
    yield server
    assert server.stop() == 0


def reward_of(k: int, edited) -> float:
    return expected_echo(k, edited)["reward"]


# -- the released constructor forms -------------------------------------------------------

def test_constructor_forms_resolve_as_the_released_client():
    assert RewardClient().base_url == "http://127.0.0.1:23456"  # the released default (and serve's port)
    assert RewardClient("10.0.0.5", 23456, timeout=600, max_retries=2).base_url == "http://10.0.0.5:23456"
    client = RewardClient("10.0.0.5", 23456, 600, 2)  # positionally, as the released signature allows
    assert client.max_retries == 2 and client.timeout.read == 600
    assert RewardClient("127.0.0.1", proxy_port=8123).base_url == "http://127.0.0.1:8123"
    assert RewardClient(proxy_host="gpu1", proxy_port=9000).base_url == "http://gpu1:9000"
    assert RewardClient(proxy_host="gpu1").base_url == "http://gpu1:23456"
    assert RewardClient("http://gpu1:9000/").base_url == "http://gpu1:9000"
    assert RewardClient("::1", 9000).base_url == "http://[::1]:9000"
    with pytest.raises(TypeError, match="twice"):
        RewardClient("a", proxy_host="b")
    with pytest.raises(TypeError, match="URL or a host"):
        RewardClient("http://a:1", 2)
    with pytest.raises(ValueError, match="tries in all"):
        RewardClient(max_retries=0)
    with pytest.raises(ValueError, match="on_error"):
        RewardClient(on_error="zero")


def test_no_argument_client_reads_spatialreward_url():
    code = "from spatialreward.client import RewardClient; print(RewardClient().base_url)"
    for value, expected in (("http://gpu7:8100/", "http://gpu7:8100"), ("gpu7:8100", "http://gpu7:8100")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SPATIALREWARD_URL": value})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_serve_listens_on_the_released_port_by_default():
    from click.testing import CliRunner

    from spatialreward.commands import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "23456" in result.output


def test_every_constructor_form_judges(server):
    sources, edited = [[item_image(50)]], [item_image(3)]
    metas = [{"instruction": "item 3"}]
    for client in (RewardClient("127.0.0.1", server.port, timeout=600, max_retries=2),
                   RewardClient("127.0.0.1", proxy_port=server.port),
                   RewardClient(proxy_host="127.0.0.1", proxy_port=server.port, timeout=300, max_retries=3),
                   RewardClient(server.url)):
        with client:
            assert client.ping()
            scores, rewards, reasoning, meta = client.evaluate(sources, edited, metas)
        assert rewards == [pytest.approx(reward_of(3, edited[0]))] and meta[0]["original_index"] == 0


# -- meta_datas as the released server reads them ------------------------------------------

def test_meta_datas_dicts_json_strings_plain_strings_and_prompt(server):
    assert parse_meta('{"instruction": "a", "id": "7"}', 0) == ({"instruction": "a", "id": "7"}, "a", None)
    assert parse_meta("Remove the dog", 0) == ({"instruction": "Remove the dog"}, "Remove the dog", None)
    assert parse_meta({"prompt": "p"}, 0)[1] == "p"
    assert parse_meta({"instruction": "", "prompt": "p"}, 0)[1] == "p"
    assert parse_meta("{not json", 0)[1] == "{not json"  # not JSON: the text is the instruction
    assert "no 'instruction'" in parse_meta({"tag": 1}, 3)[2] and "meta_datas[3]" in parse_meta({"tag": 1}, 3)[2]
    assert "not a dict" in parse_meta(5, 1)[2]

    edited = [item_image(k) for k in range(5)]
    metas = [{"instruction": "item 0"}, json.dumps({"instruction": "item 1", "id": "x1"}), "item 2",
             {"prompt": "item 3"}, {"tag": "no instruction"}]
    scores, rewards, reasoning, meta = RewardClient(server.url).evaluate([[item_image(60)]] * 5, edited, metas)
    assert rewards[:4] == [pytest.approx(reward_of(k, edited[k])) for k in range(4)]
    assert meta[1] == {"instruction": "item 1", "id": "x1", "original_index": 1}  # the JSON string, parsed
    assert meta[2]["instruction"] == "item 2"
    # the sample without an instruction is an input error of its own; the others were judged
    assert rewards[4] is None and meta[4]["error"]["stage"] == "input" and "meta_datas[4]" in reasoning[4]


# -- the EditScore OmniGen2-RL loop (examples/OmniGen2-RL/train.py), import switched -------------

def editscore_step(server, on_error: str, *, group_size: int = 4, prompts: int = 3, fail_at=(5,)):
    """What the EditScore loop does around the reward call: meta_data as JSON
    strings with an id, ``evaluate_images(...)``, ``torch.tensor(rewards)``, then
    per-prompt advantages (reward - group mean) / (group std + eps)."""
    input_images, output_images, meta_data, instruction = [], [], [], []
    for p in range(prompts):
        for g in range(group_size):
            k = p * group_size + g
            input_images.append([item_image(100 + p)])
            output_images.append(b"a broken edited image" if k in fail_at else item_image(k))
            meta_data.append(json.dumps({"instruction": f"prompt {p}", "id": f"{k}"}))
            instruction.append(f"prompt {p}")
    scores, rewards, reasoning, meta = evaluate_images(
        input_images=input_images, output_image=output_images, meta_datas=meta_data, proxy_host="127.0.0.1",
        proxy_port=server.port, server_type="vlm", on_error=on_error)
    rewards_t = torch.tensor(rewards, dtype=torch.float32)
    by_prompt = defaultdict(list)
    for prompt, reward in zip(instruction, rewards_t):
        by_prompt[prompt].append(reward.item())
    stats = {p: (np.mean(r), np.std(r)) for p, r in by_prompt.items()}
    advantages = torch.tensor([(r.item() - stats[p][0]) / (stats[p][1] + 1e-4) for p, r in zip(instruction, rewards_t)])
    return rewards, rewards_t, advantages, meta


def test_editscore_loop_neutral_keeps_training_and_learns_nothing_from_the_failed_item(server, caplog):
    caplog.set_level("WARNING", logger="spatialreward.client")
    rewards, rewards_t, advantages, meta = editscore_step(server, "neutral", fail_at=(5,))
    # Sample 5 (prompt 1, the same source as samples 4-7) failed: it took the mean of 4, 6 and 7,
    # so its advantage in its group is zero, and nothing is NaN.
    assert not torch.isnan(advantages).any()
    assert meta[5]["error"]["stage"] == "input" and meta[5]["on_error"] == "neutral"
    assert rewards[5] == pytest.approx((rewards[4] + rewards[6] + rewards[7]) / 3)
    assert meta[5]["neutral_reward"] == pytest.approx(rewards[5])
    assert advantages[5].item() == pytest.approx(0, abs=1e-5)
    assert len({round(r, 9) for r in rewards[4:8]}) > 1  # the group's real rewards differ: a real test
    assert "1 of 12 items could not be judged" in caplog.text


def test_neutral_uses_the_group_of_the_same_instruction_and_source(server):
    """A GRPO group shares the instruction and the source: a failed member takes
    the mean of the others, so its advantage within the group is zero."""
    src, edited = item_image(200), [item_image(k) for k in range(4)]
    bad = b"not an image"  # an input error for one member of the group
    scores, rewards, _, meta = RewardClient(server.url, on_error="neutral").evaluate(
        [[src]] * 4 + [[item_image(201)]], edited[:3] + [bad, edited[3]], ["group 7"] * 4 + ["item 3"])
    group = rewards[:3]
    assert rewards[3] == pytest.approx(sum(group) / 3) and meta[3]["error"]["stage"] == "input"
    assert rewards[3] - np.mean(rewards[:4]) == pytest.approx(0, abs=1e-9)
    assert scores[3] == pytest.approx(sum(scores[:3]) / 3)


@pytest.mark.parametrize("policy", ["none", "nan", "raise"])
def test_editscore_loop_under_the_other_policies(server, policy):
    if policy == "raise":
        with pytest.raises(ItemsFailed, match=r"1 of 12 items could not be judged \(items 5\)") as caught:
            editscore_step(server, policy)
        assert caught.value.failed == [5]
        return
    if policy == "none":  # the released shape: None in the list; a tensor of it is the caller's TypeError
        with pytest.raises(TypeError):
            editscore_step(server, policy)
        return
    rewards, rewards_t, advantages, meta = editscore_step(server, policy)
    assert math.isnan(rewards[5]) and torch.isnan(rewards_t).sum() == 1
    assert meta[5]["error"]["stage"] == "input"
    mask = ~torch.isnan(rewards_t)
    assert mask.sum() == 11  # what a NaN-masking trainer keeps


def test_no_failure_no_change(server):
    for policy in ("none", "nan", "raise", "neutral"):
        rewards, _, advantages, meta = editscore_step(server, policy, prompts=1, fail_at=())
        assert rewards == [pytest.approx(r) for r in editscore_step(server, "none", prompts=1, fail_at=())[0]]
        assert not any("error" in m for m in meta)


# -- a server that is down ---------------------------------------------------------------------

def test_server_down_fails_every_item_under_the_policy():
    url = f"http://127.0.0.1:{free_port()}"
    images = ([[item_image(1)]] * 2, [item_image(2), item_image(3)], ["item 2", "item 3"])
    with RewardClient(url, max_retries=2, backoff_s=0.01) as client:
        scores, rewards, reasoning, meta = client.evaluate(*images)
        assert rewards == [None, None] and scores == [None, None]
        assert all(m["error"]["stage"] == "server" and "after 2 tries" in m["error"]["message"] for m in meta)
        _, rewards, _, _ = client.evaluate(*images, on_error="nan")
        assert all(math.isnan(r) for r in rewards)
        for policy in ("raise", "neutral"):  # neutral: no valid reward to take a mean of
            with pytest.raises(ItemsFailed, match="2 of 2 items"):
                client.evaluate(*images, on_error=policy)


# -- the server's on_error field -----------------------------------------------------------------

def post(server, on_error=None, *, fail: int = 1):
    src = encode_image(png_bytes(item_image(300)))
    items = [{"source": src, "edited": encode_image(png_bytes(item_image(k))),
              "instruction": FAIL if k == fail else "same group"} for k in range(3)]
    body = {"items": items, **({"on_error": on_error} if on_error else {})}
    response = httpx.post(server.url + "/v1/rewards", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # json.loads reads NaN


def test_server_on_error_lists(server):
    plain = post(server)
    assert set(plain) == {"results"} and plain["results"][1]["reward"] is None
    valid = [plain["results"][k]["reward"] for k in (0, 2)]
    for policy, check in (("none", lambda r: r is None), ("nan", math.isnan),
                          ("neutral", lambda r: r == pytest.approx(sum(valid) / 2))):
        answer = post(server, policy)
        assert answer["results"] == plain["results"] and answer["on_error"] == policy
        assert answer["failed"] == [1] and check(answer["rewards"][1])
        assert answer["rewards"][0] == pytest.approx(valid[0]) and answer["rewards"][2] == pytest.approx(valid[1])
    raised = post(server, "raise")
    assert raised["failed"] == [1] and "rewards" not in raised and "items 1" in raised["error"]
    assert post(server, "raise", fail=-1).get("error") is None
    metrics = httpx.get(server.url + "/metrics").text
    counted = [line for line in metrics.splitlines()
               if line.startswith('spatialreward_policy_failed_items_total{policy="neutral",route="/v1/rewards"}')]
    assert counted and float(counted[0].split()[-1]) >= 1
    bad = httpx.post(server.url + "/v1/rewards", json={"items": [], "on_error": "zero"})
    assert bad.status_code == 422


def test_a_pickled_request_gets_415_naming_the_json_client(server):
    answer = httpx.post(server.url + "/", content=pickle.dumps({"input_images": [], "output_image": []}),
                        headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 415
    detail = answer.json()["detail"]
    assert "\n" not in detail and "spatialreward.client.RewardClient" in detail


# -- the policy itself -------------------------------------------------------------------------

def test_policy_values():
    values = [0.2, None, 0.6, float("nan"), 0.9]
    groups = ["a", "a", "a", "b", "c"]
    assert apply_policy(values, "none").values == [0.2, None, 0.6, None, 0.9]
    out = apply_policy(values, "nan")
    assert math.isnan(out.values[1]) and math.isnan(out.values[3]) and out.failed == [1, 3]
    out = apply_policy(values, "neutral", groups=groups)
    assert out.values[1] == pytest.approx(0.4)  # its group's valid mean
    assert out.values[3] == pytest.approx((0.2 + 0.6 + 0.9) / 3)  # a group with no valid item: the batch mean
    assert out.neutral == {1: pytest.approx(0.4), 3: pytest.approx((0.2 + 0.6 + 0.9) / 3)}
    assert apply_policy(values, "neutral").values[1] == pytest.approx((0.2 + 0.6 + 0.9) / 3)
    with pytest.raises(ItemsFailed) as caught:
        apply_policy(values, "raise", errors=[None, {"stage": "parse", "message": "cut"}, None, None, None])
    assert caught.value.failed == [1, 3] and "item 1: parse: cut" in str(caught.value)
    with pytest.raises(ItemsFailed):
        apply_policy([None, None], "neutral")
    assert apply_policy([0.5], "raise").values == [0.5]
    with pytest.raises(ValueError):
        apply_policy([0.5], "zero")


# -- review fixes: nothing sent before every item is checked; a bad item fails alone ------------

def items_judged(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("spatialreward_items_total{"))


def test_a_bad_item_beyond_the_first_chunk_fails_alone_and_nothing_is_sent_first(server):
    edited = [item_image(k) for k in range(70)]
    sources = [[item_image(400)]] * 70
    sources[69] = ["/nonexistent/source.png"]  # an unreadable file in the second chunk
    sources[3] = [None]  # not an image at all, in the first
    before = items_judged(server)
    scores, rewards, reasoning, meta = RewardClient(server.url).evaluate(sources, edited,
                                                                         [f"item {k}" for k in range(70)])
    assert rewards[69] is None and rewards[3] is None
    assert meta[69]["error"]["stage"] == "input" and "/nonexistent/source.png" in meta[69]["error"]["message"]
    assert all(rewards[k] == pytest.approx(reward_of(k, edited[k])) for k in range(70) if k not in (3, 69))
    assert items_judged(server) - before == 68
    # score() is strict: the bad item raises before any request is sent
    before = items_judged(server)
    items = [{"source": item_image(400), "edited": edited[k], "instruction": f"item {k}"} for k in range(70)]
    items[69]["source"] = []
    with pytest.raises(ValueError, match="1 to 8"):
        RewardClient(server.url).score(items)
    assert items_judged(server) == before


def test_host_colon_port_in_any_form():
    assert RewardClient("gpu1:9000").base_url == "http://gpu1:9000"
    assert RewardClient(proxy_host="gpu1:9000").base_url == "http://gpu1:9000"
    assert RewardClient("::1").base_url == "http://[::1]:23456"


def test_server_neutral_groups_keep_every_source(server):
    """A source that fails to decode still names the group: an item with sources
    [S1, BAD] is not in the group of [S1]; its neutral value is the batch mean."""
    s1 = encode_image(png_bytes(item_image(500)))
    items = [{"source": s1, "edited": encode_image(png_bytes(item_image(k))), "instruction": "item 3"}
             for k in (1, 2)]
    items.append({"source": [s1, base64_junk()], "edited": encode_image(png_bytes(item_image(3))),
                  "instruction": "item 3"})
    items.append({"source": encode_image(png_bytes(item_image(501))), "edited": encode_image(png_bytes(item_image(4))),
                  "instruction": "item 9"})
    answer = httpx.post(server.url + "/v1/rewards", json={"items": items, "on_error": "neutral"}, timeout=60).json()
    valid = [r["reward"] for r in answer["results"] if r["status"] == "ok"]
    assert answer["failed"] == [2] and answer["rewards"][2] == pytest.approx(sum(valid) / len(valid))
    # and a failed member of a real group takes the group's mean, not the batch's
    items[2] = {"source": s1, "edited": base64_junk(), "instruction": "item 3"}
    answer = httpx.post(server.url + "/v1/rewards", json={"items": items, "on_error": "neutral"}, timeout=60).json()
    group = [answer["results"][k]["reward"] for k in (0, 1)]
    assert answer["rewards"][2] == pytest.approx(sum(group) / 2)
    assert sum(group) / 2 != pytest.approx(sum(group + [answer["rewards"][3]]) / 3)


def test_server_refuses_an_unknown_on_error(server):
    item = {"source": encode_image(png_bytes(item_image(1))), "edited": encode_image(png_bytes(item_image(2))),
            "instruction": "item 2"}
    bad = httpx.post(server.url + "/v1/rewards", json={"items": [item], "on_error": "zero"})
    assert bad.status_code == 422 and "on_error" in bad.text


def base64_junk() -> str:
    import base64

    return base64.b64encode(b"not an image at all").decode()
