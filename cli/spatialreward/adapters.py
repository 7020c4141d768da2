"""Trainer adapters over the reward client, each a few lines.

- ``flow_grpo_reward(url)``: a flow_grpo-style batch reward function
  ``fn(images, prompts, metadata) -> (rewards, info)``: ``images`` a float
  tensor N x C x H x W in [0, 1] (as flow_grpo's sampler gives it), a uint8
  array N x H x W x C, or a list of PIL images; the instruction of item i is
  ``metadata[i]["instruction"]`` if present, else ``prompts[i]``; its source
  image ``metadata[i]["source"]`` (a path, bytes, PIL image or array), else
  ``ref_images[i]`` (the keyword flow_grpo's editing variants pass).
  ``rewards`` is a float32 array: a failed item is NaN (never 0.0), its error in
  ``info["errors"][i]``; mask NaN before the advantage computation.
- ``evaluate_images(...)``: the released repository's convenience function,
  same arguments and answer, over ``RewardClient``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .client import RewardClient


def _edited_images(images) -> list:
    """The batch as a list of images, without a lossy step (float [0,1] -> uint8 as the trainers save them)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(images, torch.Tensor):
        array = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return list(array.transpose(0, 2, 3, 1))  # NCHW -> NHWC
    import numpy as np

    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            images = (images.astype(np.float64) * 255).round().clip(0, 255).astype(np.uint8)
            if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
                images = images.transpose(0, 2, 3, 1)
        return list(images)
    return list(images)


def flow_grpo_reward(url: str | None = None, *, client: RewardClient | None = None, **client_kwargs):
    """A flow_grpo-style reward function served by ``spatialreward serve`` at ``url``."""
    client = client or RewardClient(url, **client_kwargs)

    def fn(images, prompts: Sequence[str], metadata: Sequence[dict], ref_images=None, **_: Any):
        import numpy as np

        edited = _edited_images(images)
        references = _edited_images(ref_images) if ref_images is not None else None
        items = []
        for i, (image, prompt, meta) in enumerate(zip(edited, prompts, metadata)):
            meta = meta or {}
            source = meta.get("source", meta.get("source_image"))
            if source is None and references is not None:
                source = references[i]
            if source is None:
                raise ValueError(f"metadata[{i}] has no 'source' image (and no ref_images were given)")
            items.append({"source": source, "edited": image, "instruction": meta.get("instruction") or prompt})
        if len(items) != len(edited):
            raise ValueError(f"{len(edited)} images but {len(prompts)} prompts and {len(metadata)} metadata entries")
        results = client.score(items)
        rewards = np.array([np.nan if r.reward is None else r.reward for r in results], dtype=np.float32)
        info = {"score": [r.score for r in results], "errors": [r.error for r in results]}
        return rewards, info

    fn.client = client
    return fn


def evaluate_images(input_images, output_image, meta_datas, proxy_host: str = "127.0.0.1", proxy_port: int = 8000,
                    server_type: str | None = None, **client_kwargs):
    """The released convenience function: ``(scores, rewards, reasoning, meta_data)``."""
    with RewardClient(proxy_host=proxy_host, proxy_port=proxy_port, **client_kwargs) as client:
        return client.evaluate(input_images, output_image, meta_datas)
