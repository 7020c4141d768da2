"""Trainer adapters over the reward client, each a few lines.

- ``flow_grpo_reward(url)``: a flow_grpo-style batch reward function
  ``fn(images, prompts, metadata) -> (rewards, info)``: ``images`` a float
  tensor N x C x H x W in [0, 1] (as flow_grpo's sampler gives it), a uint8
  array N x H x W x C, or a list of PIL images; the instruction of item i is
  ``metadata[i]["instruction"]`` if present, else ``prompts[i]``; its source
  image ``metadata[i]["source"]`` (a path, bytes, PIL image or array, or a list
  of 1 to 8 of them: a multi-reference edit, sources in order), else
  ``ref_images[i]`` (the keyword flow_grpo's editing variants pass: a batch in
  the layout of ``images``, one source per item; N x K x C x H x W or a list of
  per-item lists for K sources per item).
  ``rewards`` is a float32 array: a failed item is NaN (never 0.0), its error in
  ``info["errors"][i]``; mask NaN before the advantage computation (or pass
  ``on_error="neutral"``). Built in ``spatialreward.integrations.flow_grpo``, which
  also has a drop-in for flow_grpo's ``multi_score``.
- ``evaluate_images(...)``: the released repository's convenience function,
  same arguments and answer, over ``RewardClient``.
"""

from __future__ import annotations


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


def _source_images(ref_images) -> list:
    """``ref_images`` as one entry per item: an image, or a list of an item's
    sources (a 5-d tensor or array N x K x ..., or a list whose entries are lists)."""
    if getattr(ref_images, "ndim", None) == 5:
        return [_edited_images(sources) for sources in ref_images]
    if isinstance(ref_images, (list, tuple)) and any(isinstance(r, (list, tuple)) for r in ref_images):
        return [[_one_image(image) for image in r] if isinstance(r, (list, tuple)) else _one_image(r)
                for r in ref_images]
    return _edited_images(ref_images)


def _one_image(image):
    """One image as ``_edited_images`` makes a batch's (a C x H x W float tensor as uint8 H x W x C)."""
    if getattr(image, "ndim", None) == 3 and not isinstance(image, (str, bytes)):
        return _edited_images(image[None])[0]
    return image


def flow_grpo_reward(url: str | None = None, *, client: RewardClient | None = None, **kwargs):
    """A flow_grpo-style reward function served by ``spatialreward serve`` at ``url``
    (``spatialreward.integrations.flow_grpo.flow_grpo_reward``; ``on_error`` defaults to ``nan``)."""
    from .integrations.flow_grpo import flow_grpo_reward as build

    return build(url, client=client, **kwargs)


def evaluate_images(input_images, output_image, meta_datas, proxy_host: str = "127.0.0.1", proxy_port: int = 23456,
                    server_type: str | None = None, **client_kwargs):
    """The released convenience function, same arguments and answer: ``(scores,
    rewards, reasoning, meta_data)``; its client as the released one builds it
    (``timeout=600``, ``max_retries=2``) unless ``client_kwargs`` say otherwise."""
    client_kwargs = {"timeout": 600, "max_retries": 2, **client_kwargs}
    with RewardClient(proxy_host, proxy_port, **client_kwargs) as client:
        return client.evaluate(input_images, output_image, meta_datas)
