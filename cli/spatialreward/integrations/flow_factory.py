"""Flow-Factory reward models over ``spatialreward serve``: the released plugin, replaced by one config line.

The released SpatialReward plugin for Flow-Factory
(``example/reward/client/my_reward.py``: ``MyPointwiseRewardModel``,
``MyGroupwiseRewardModel``) pickles to the released proxy and gives 0.0 to
every item of a batch when anything fails. These classes keep its names,
``required_fields``, config keys and call, and speak JSON to ``/v1/rewards``
through ``spatialreward.client.RewardClient``::

    rewards:
      - name: spatial
        reward_model: spatialreward.integrations.flow_factory.MyPointwiseRewardModel
        server_url: http://gpu1:23456      # the released keys, same meaning
        timeout: 300
        retry_attempts: 3                  # tries in all
        on_error: neutral                  # new: none of the batch becomes 0.0

``SpatialRewardPointwise`` and ``SpatialRewardGroupwise`` are the same classes
under descriptive names. ``__call__(prompt, image, condition_images, ...)``
(lists of PIL images, as Flow-Factory's ``RewardProcessor`` passes them;
tensors and arrays are taken too) returns Flow-Factory's ``RewardModelOutput``:
``rewards`` a float32 tensor on the model's device, one per sample in order.

A failed item (an image the model could not judge, an unparseable answer, the
server down after its tries) is never a 0.0: ``on_error`` decides
(``spatialreward.policy``): ``neutral`` (default: the mean reward of its group,
so its group advantage is zero; pointwise groups are the samples with the same
prompt and condition images, groupwise the whole call), ``nan`` (mask it) or
``raise``. ``none`` cannot be a tensor and is refused. Failures are logged with
their count and reported in ``extra_info`` (``on_error``, ``failed``,
``failed_count``, ``errors``, ``neutral``).

Flow-Factory is not needed to import this module: without it (or torch) the
classes stand on a plain base with the same constructor, and
``RewardModelOutput`` is a small dataclass of the same fields.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..client import RewardClient
from ..constants import MAX_SOURCES
from ..policy import ItemsFailed, apply_policy, check_policy

logger = logging.getLogger("spatialreward.integrations.flow_factory")

DEFAULT_SERVER_URL = "http://localhost:23456"  # the released plugin's default
DEFAULT_TIMEOUT = 300
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_POLICY = "neutral"
TENSOR_POLICIES = ("nan", "raise", "neutral")


class _PlainRewardModel:
    """Flow-Factory's ``BaseRewardModel`` constructor, for use without Flow-Factory."""

    required_fields: Tuple[str, ...] = ()
    use_tensor_inputs: bool = False

    def __init__(self, config, accelerator):
        self.accelerator = accelerator
        self.config = config
        device = _option(config, "device", None)
        if device is None or str(device).startswith("cuda"):
            device = getattr(accelerator, "device", None) or device or "cpu"
        self.device = device
        self.dtype = _option(config, "dtype", None)
        self.model = None

    def to(self, device):
        self.device = device
        return self


@dataclass
class _PlainRewardModelOutput:
    """Flow-Factory's ``RewardModelOutput`` fields."""

    rewards: Any
    extra_info: Optional[Dict[str, Any]] = None


def _flow_factory_bases():
    try:
        from flow_factory.rewards.abc import GroupwiseRewardModel, PointwiseRewardModel, RewardModelOutput
    except ImportError:  # Flow-Factory (or torch, accelerate, diffusers) is not installed
        return _PlainRewardModel, _PlainRewardModel, _PlainRewardModelOutput
    return PointwiseRewardModel, GroupwiseRewardModel, RewardModelOutput


_PointwiseBase, _GroupwiseBase, RewardModelOutput = _flow_factory_bases()
HAVE_FLOW_FACTORY = RewardModelOutput is not _PlainRewardModelOutput


def _option(config, key: str, default=None):
    """A reward config key as Flow-Factory holds it: a ``RewardArguments`` keeps
    unknown YAML keys (``server_url``, ...) in ``extra_kwargs`` (read by
    ``config[key]``, not always by ``getattr``); a dict or namespace works too."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    extra = getattr(config, "extra_kwargs", None)
    if isinstance(extra, dict) and key in extra:
        return extra[key]
    value = getattr(config, key, None)
    if value is not None:
        return value
    try:
        value = config[key]
    except (KeyError, TypeError, IndexError, AttributeError):
        return default
    return default if value is None else value


def _png(image) -> bytes:
    """One image as its file's bytes (sent as they are): a path's bytes, bytes as
    given, a PIL image or uint8 array as PNG, a float C x H x W tensor in [0, 1] as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        if hasattr(image, "detach"):  # a torch tensor, C x H x W
            import torch

            tensor = image.detach().float().cpu()
            if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
                tensor = tensor.permute(1, 2, 0)
            array = (tensor * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        else:
            array = np.asarray(image)
            if array.dtype != np.uint8:
                array = (array.astype(np.float64) * 255).round().clip(0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sources(entry) -> list:
    """One sample's condition images as a list (a list, one image, or an N x C x H x W tensor)."""
    if entry is None:
        return []
    if isinstance(entry, (list, tuple)):
        return list(entry)
    if getattr(entry, "ndim", None) == 4:
        return [entry[k] for k in range(entry.shape[0])]
    return [entry]


class _SpatialRewardModel:
    """What the pointwise and groupwise models share: config, client, one batch judged under the policy."""

    required_fields: Tuple[str, ...] = ("prompt", "condition_images", "image")
    use_tensor_inputs: bool = False
    whole_call_is_group = False

    def __init__(self, config, accelerator, *, client: RewardClient | None = None):
        super().__init__(config, accelerator)  # Flow-Factory's base, next in the subclasses' order
        self._setup(config, client=client)

    def _setup(self, config, *, client: RewardClient | None = None) -> None:
        self.server_url = str(_option(config, "server_url", DEFAULT_SERVER_URL)).rstrip("/")
        self.timeout = float(_option(config, "timeout", DEFAULT_TIMEOUT))
        self.retry_attempts = int(_option(config, "retry_attempts", DEFAULT_RETRY_ATTEMPTS))
        self.on_error = check_policy(str(_option(config, "on_error", DEFAULT_POLICY)))
        if self.on_error not in TENSOR_POLICIES:
            raise ValueError(f"on_error={self.on_error!r} cannot be a reward tensor; use one of "
                             f"{', '.join(TENSOR_POLICIES)}")
        self.client = client or RewardClient(self.server_url, timeout=self.timeout,
                                             max_retries=self.retry_attempts, token=_option(config, "token"))
        if not self.client.ping():
            raise RuntimeError(f"cannot reach the SpatialReward server at {self.server_url} (GET /health); "
                               f"start it with: spatialreward serve")
        logger.info("SpatialReward %s over %s (on_error=%s)", type(self).__name__, self.server_url, self.on_error)

    def _judge(self, prompt, image, condition_images) -> tuple[list, list, list]:
        """(rewards or None per sample, errors per sample, neutral group keys)."""
        if image is None or condition_images is None:
            missing = [name for name, value in (("image", image), ("condition_images", condition_images))
                       if value is None]
            raise ValueError(f"{type(self).__name__} needs prompt, image and condition_images; got no "
                             f"{' and no '.join(missing)} (Flow-Factory passes only the fields in required_fields, "
                             f"and drops a field that any sample of the batch lacks)")
        count = len(prompt)
        if not len(image) == len(condition_images) == count:
            raise ValueError(f"{count} prompts, {len(image)} images and {len(condition_images)} condition image "
                             "lists: one per sample")
        rewards: list = [None] * count
        errors: list = [None] * count
        keys: list = [None] * count
        items, sent = [], []
        for i in range(count):
            sources = [_png(s) for s in _sources(condition_images[i])]
            keys[i] = (prompt[i], tuple(hashlib.sha1(s).hexdigest() for s in sources))
            if not 1 <= len(sources) <= MAX_SOURCES:
                errors[i] = {"stage": "input", "message": f"{len(sources)} condition images; an edit takes 1 to "
                             f"{MAX_SOURCES}"}
                continue
            if not isinstance(prompt[i], str) or not prompt[i].strip():
                errors[i] = {"stage": "input", "message": "empty prompt (the edit instruction)"}
                continue
            items.append({"source": sources, "edited": _png(image[i]), "instruction": prompt[i]})
            sent.append(i)
        if items:
            # an item that cannot be sent, or a chunk that fails as a whole after its tries, fails its
            # items (stages input, server); the chunks already judged are kept
            results = self.client._judge(items, (), whole_failures=True)
            for i, result in zip(sent, results):
                if result.ok:
                    rewards[i] = result.reward
                else:
                    errors[i] = result.error
        return rewards, errors, keys

    def _output(self, values: list, outcome, errors: list):
        import torch

        failed = outcome.failed
        info = {**outcome.report(), "errors": {i: errors[i] for i in failed}, "neutral": dict(outcome.neutral)}
        if failed:
            first = errors[failed[0]] or {}
            logger.warning("SpatialReward: %d of %d samples could not be judged (samples %s; first: %s: %s); "
                           "on_error=%s gave them %s", len(failed), len(values), failed[:10], first.get("stage"),
                           first.get("message"), outcome.policy,
                           "NaN" if outcome.policy == "nan" else "their group's mean")
        rewards = torch.tensor(values, dtype=torch.float32, device=self.device)
        try:
            return RewardModelOutput(rewards=rewards, extra_info=info)
        except TypeError:  # a Flow-Factory whose RewardModelOutput has no extra_info
            return RewardModelOutput(rewards=rewards)

    def _policy(self, values: list, errors: list, groups):
        try:
            return apply_policy(values, self.on_error, groups=groups, errors=errors)
        except ItemsFailed as exc:
            logger.error("SpatialReward: %s (on_error=%s)", exc, self.on_error)
            raise


class MyPointwiseRewardModel(_SpatialRewardModel, _PointwiseBase):
    """SpatialReward, one reward per sample (the released plugin's class, over JSON).

    Config: ``server_url`` (default ``http://localhost:23456``), ``timeout``
    (300 s), ``retry_attempts`` (3 tries in all), ``on_error`` (``neutral``)."""

    def __call__(self, prompt: List[str], image: Optional[List] = None, video: Optional[List] = None,
                 condition_images: Optional[List] = None, condition_videos: Optional[List] = None, **kwargs):
        """Rewards of ``image[i]`` edited from ``condition_images[i]`` by ``prompt[i]``, in order."""
        rewards, errors, keys = self._judge(prompt, image, condition_images)
        outcome = self._policy(rewards, errors, None if self.whole_call_is_group else keys)
        return self._output(outcome.values, outcome, errors)


class MyGroupwiseRewardModel(_SpatialRewardModel, _GroupwiseBase):
    """SpatialReward over one group (Flow-Factory calls it once per group): the
    released plugin's answer, each sample's rank in its group scaled to [0, 1]
    (``rank / (n - 1)``, ranked by reward). A failed sample is ranked out: the
    valid ones are ranked among themselves, and ``neutral`` gives it their mean
    rank (a zero advantage), ``nan`` NaN; ``raise`` raises."""

    whole_call_is_group = True

    def __call__(self, prompt: List[str], image: Optional[List] = None, video: Optional[List] = None,
                 condition_images: Optional[List] = None, condition_videos: Optional[List] = None, **kwargs):
        """Rank rewards of the group's samples, in order."""
        rewards, errors, _ = self._judge(prompt, image, condition_images)
        ranks = group_ranks(rewards)
        outcome = self._policy(ranks, errors, None)
        output = self._output(outcome.values, outcome, errors)
        info = getattr(output, "extra_info", None)
        if isinstance(info, dict):
            info["raw_rewards"] = list(rewards)
        return output


def group_ranks(rewards: Sequence[float | None]) -> list[float | None]:
    """Each valid reward's rank among the valid ones, scaled to [0, 1] as the
    released plugin does (``argsort().argsort() / max(n - 1, 1)``, ties in
    order); None stays None."""
    valid = [i for i, r in enumerate(rewards) if r is not None]
    order = sorted(valid, key=lambda i: rewards[i])
    scale = max(len(valid) - 1, 1)
    ranks: list = [None] * len(rewards)
    for rank, i in enumerate(order):
        ranks[i] = rank / scale
    return ranks


SpatialRewardPointwise = MyPointwiseRewardModel
SpatialRewardGroupwise = MyGroupwiseRewardModel

__all__ = ["MyPointwiseRewardModel", "MyGroupwiseRewardModel", "SpatialRewardPointwise", "SpatialRewardGroupwise",
           "RewardModelOutput", "group_ranks", "HAVE_FLOW_FACTORY"]
