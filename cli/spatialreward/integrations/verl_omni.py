"""SpatialReward as a verl-omni reward function (github.com/verl-project/verl-omni).

verl-omni's reward managers (``verl_omni/reward_loop/reward_manager/visual.py``,
``multi.py``) call the configured scorer once per sample, by keyword::

    await compute_score(data_source=..., solution_image=..., ground_truth=...,
                        extra_info=..., **extra)      # awaited when it is ``async def``

``solution_image`` is the generated image, a ``torch.uint8`` C x H x W tensor;
``ground_truth`` the prompt text; ``**extra`` the manager's
``reward_router_address``/``reward_model_tokenizer``/``model_name`` when a reward
model is enabled, and (``MultiVisualRewardManager``) every non-reserved key of the
``reward.reward_functions.<key>`` entry. A returned dict's ``score`` is the reward;
its other keys become metrics (``critic/<key>/mean``; ``reward/<name>/<key>`` under
``MultiVisualRewardManager``); every sample must return the same keys.

Configure it (the module path works anywhere spatialreward is installed)::

    reward.custom_reward_function.path=pkg://spatialreward.integrations.verl_omni
    reward.custom_reward_function.name=compute_score

The dataset's ``extra_info`` carries the edit:

- ``source`` (or ``source_image`` / ``source_images``): the source image -- a path,
  bytes, a ``{"bytes": ..., "path": ...}`` dict (a Hugging Face ``Image`` column), a
  PIL image, a uint8 H x W x C array or C x H x W tensor -- or a list of 1 to 8 of
  them (a multi-reference edit, in order);
- ``instruction`` (or ``prompt``): the edit instruction; else ``ground_truth``.

The server is the ``server_url`` keyword (a ``reward_functions`` entry key), else
``SPATIALREWARD_URL``, else 127.0.0.1:23456. One ``AsyncRewardClient`` per event
loop and server is shared by all calls; concurrent calls arrive at the server
together and it batches them.

The answer: ``{"score": reward in [0, 1], "sc", "pq", "success", "overediting",
"naturalness", "artifacts", "passed", "failed": 0.0}``.

A sample that could not be judged (an unreadable image, an unparseable judgment, the
server down after its retries) is never 0.0. verl-omni turns a scorer's exception
into 0.0 (``MultiVisualRewardManager``, unless the entry has ``required: true``) or
lets it stop the step (``VisualRewardManager``), so by default (``on_error="nan"``)
we return instead ``{"score": nan, <every sub-score>: nan, "failed": 1.0}``: no
invented number, and visible (``critic/failed/mean`` is the failure rate).
verl-omni does not mask NaN: ``compute_flow_grpo_outcome_advantage`` takes the
mean/std of the group (and, with ``global_std``, of the batch), so the NaN spreads
to those advantages, the loss and the gradient norm, and verl-omni's engines skip an
optimizer step whose gradient norm is not finite -- the step learns nothing rather
than something false. ``on_error="raise"`` raises ``ItemsFailed`` instead: it stops
the run under ``VisualRewardManager``; under ``MultiVisualRewardManager`` set
``required: true`` or the manager will substitute 0.0. ``neutral`` (the group's mean)
cannot be done per sample -- the manager hands a scorer one sample, never its group
-- and ``none`` is not a number verl-omni can use; both are refused.

Errors of setup (no source image in ``extra_info``, no instruction, a latent
instead of pixels) raise ``ValueError`` under every policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from typing import Any

# absolute imports: verl may load this module from its file path (custom_reward_function.path=/.../verl_omni.py)
from spatialreward.client import AsyncRewardClient, RewardError, RewardResult
from spatialreward.constants import MAX_SOURCES
from spatialreward.policy import ItemsFailed, check_policy

logger = logging.getLogger("spatialreward.integrations.verl_omni")

DEFAULT_ON_ERROR = "nan"
SUBSCORES = ("success", "overediting", "naturalness", "artifacts")
KEYS = ("score", "sc", "pq", *SUBSCORES, "passed", "failed")
SOURCE_KEYS = ("source", "source_image", "source_images")
INSTRUCTION_KEYS = ("instruction", "prompt")

# one client per event loop (httpx's async pool belongs to the loop that made it) and server settings
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


async def compute_score(data_source: str | None, solution_image, ground_truth: str | None, extra_info: dict | None,
                        *, server_url: str | None = None, on_error: str = DEFAULT_ON_ERROR,
                        timeout: float = 300.0, max_retries: int = 3, token: str | None = None,
                        **kwargs: Any) -> dict:
    """verl-omni's scorer call; see the module doc for ``extra_info`` and the answer.
    ``kwargs`` (the manager's ``reward_router_address``, ``model_name``, ...) are ignored."""
    policy = check_policy(on_error)
    if policy in ("neutral", "none"):
        raise ValueError(f"on_error={policy!r} cannot be used with verl-omni: "
                         + ("a scorer sees one sample, never its group, so it has no group mean to give"
                            if policy == "neutral" else "its reward managers need a number")
                         + "; use 'nan' (the default) or 'raise'")
    extra_info = extra_info or {}
    client = _client(server_url, timeout=timeout, max_retries=max_retries, token=token)
    try:
        item = {"source": _source(extra_info), "edited": _pixels(solution_image, "solution_image"),
                "instruction": _instruction(extra_info, ground_truth)}
    except (ValueError, TypeError, OSError, KeyError) as exc:  # this sample's input: never an exception to 0.0
        result = RewardResult(index=0, id=None, status="error", reward=None, score=None,
                              error={"stage": "input", "message": str(exc)})
    else:
        try:
            result = (await client._judge([item], (), whole_failures=True))[0]
        except RewardError as exc:  # refused as a whole (401, 413, 422): a failure of this sample, not a 0.0
            result = RewardResult(index=0, id=None, status="error", reward=None, score=None,
                                  error={"stage": "server", "message": str(exc)})
    if result.ok:
        scores = result.scores or {}
        return {"score": float(result.reward), "sc": _num(result.sc), "pq": _num(result.pq),
                **{name: _num(scores.get(name)) for name in SUBSCORES}, "passed": _num(result.score), "failed": 0.0}
    error = result.error or {}
    where = "sample" + "".join(f" {k}={v!r}" for k, v in (("data_source", data_source),
                                                          ("index", extra_info.get("index"))) if v is not None)
    message = f"{where} could not be judged at {error.get('stage')}: {error.get('message')}"
    if policy == "raise":
        raise ItemsFailed(f"on_error=raise: {message}", [0], [error])
    logger.warning("spatialreward: %s; on_error=nan gave it score NaN", message)
    return {**{key: math.nan for key in KEYS}, "failed": 1.0}


def _client(server_url: str | None, **settings) -> AsyncRewardClient:
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    key = (server_url, tuple(sorted(settings.items())))
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = AsyncRewardClient(server_url, **settings)
    return client


async def close_clients() -> None:
    """Close the clients of the running event loop (a trainer may call it at shutdown)."""
    for client in _clients.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _instruction(extra_info: dict, ground_truth) -> str:
    for key in INSTRUCTION_KEYS:
        if isinstance(extra_info.get(key), str) and extra_info[key].strip():
            return extra_info[key]
    if isinstance(ground_truth, str) and ground_truth.strip():
        return ground_truth
    raise ValueError("no edit instruction: put it in extra_info['instruction'] (or 'prompt'), "
                     "or in the sample's ground_truth")


def _source(extra_info: dict):
    for key in SOURCE_KEYS:
        if extra_info.get(key) is not None:
            source = extra_info[key]
            break
    else:
        raise ValueError(f"no source image: extra_info has none of {', '.join(SOURCE_KEYS)} "
                         f"(keys: {sorted(extra_info)})")
    if isinstance(source, (list, tuple)) or _is_array_list(source):
        if not 1 <= len(source) <= MAX_SOURCES:
            raise ValueError(f"extra_info source: {len(source)} images; an edit takes 1 to {MAX_SOURCES}")
        return [_image(s, f"source {i}") for i, s in enumerate(source)]
    return _image(source, "source")


def _is_array_list(value) -> bool:
    """A numpy object array of images (how a list column can come out of a DataProto)."""
    return getattr(value, "dtype", None) is not None and str(value.dtype) == "object"


def _image(value, where: str):
    if isinstance(value, dict):  # a Hugging Face datasets Image value
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
        raise ValueError(f"{where}: an image dict needs 'bytes' or 'path'")
    if getattr(value, "ndim", None) is not None:
        return _pixels(value, where)
    return value  # a path, bytes or a PIL image: the client sends it as it is


def _pixels(image, where: str):
    """A uint8 H x W x C array from a C x H x W (or H x W x C) uint8 tensor or array;
    a float one in [0, 1] is scaled. A one-frame video (1 x C x H x W) is its frame."""
    import numpy as np

    if hasattr(image, "detach"):  # torch
        import torch

        image = image.detach().cpu()
        if image.is_floating_point():
            if float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
                raise ValueError(f"{where}: a floating-point tensor outside [0, 1] (a latent?); "
                                 "SpatialReward judges pixels: use the rollout's output_type=image")
            image = (image.float() * 255).round().clamp(0, 255).to(torch.uint8)
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{where}: an image of shape {tuple(array.shape)}; want C x H x W or H x W x C")
    if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        if array.dtype.kind != "f" or array.min() < -1e-3 or array.max() > 1 + 1e-3:
            raise ValueError(f"{where}: pixels must be uint8 or floats in [0, 1], not {array.dtype}")
        array = (array.astype(np.float64) * 255).round().clip(0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]
    return np.ascontiguousarray(array)
