"""SpatialReward as a flow_grpo scorer (github.com/yifan123/flow_grpo).

flow_grpo builds its reward function with ``flow_grpo.rewards.multi_score(device,
score_dict)``: each named scorer is built as ``factory(device)`` (or ``factory()``),
and the returned ``_fn(images, prompts, metadata, ref_images=None,
only_strict=True)`` calls each as ``fn(images, prompts, metadata)`` -> ``(scores,
rewards_meta)`` and returns ``({name: scores, ..., "avg": weighted sum}, {})``.
Its trainers submit ``reward_fn(images, prompts, prompt_metadata[, ref_images],
only_strict=...)`` to a thread pool, unpack ``rewards, reward_metadata =
future.result()``, turn every entry of ``rewards`` into a tensor and feed
``rewards["avg"]`` to ``PerPromptStatTracker.update(prompts, ...)``.

``images`` is a float tensor N x C x H x W in [0, 1] (also a uint8 N x H x W x C
array or a list of PIL images). The edit's source image is ``ref_images[i]`` (what
the editing trainers such as ``train_qwenimage_edit_plus.py`` pass: a list of PIL
images, or a batch laid out like ``images``; N x K x ... or per-item lists for K
sources), else ``metadata[i]["source"]`` (a path, bytes, PIL image or array, or a
list of 1 to 8). The instruction is ``metadata[i]["instruction"]``, else the prompt.

Two ways in:

- **The wrapper** (the trainer's import is the only change)::

      # from flow_grpo.rewards import multi_score
      from spatialreward.integrations.flow_grpo import multi_score
      reward_fn = multi_score(accelerator.device, {"spatialreward": 1.0, "pickscore": 0.5})

  ``"spatialreward"`` is ours and gets ``ref_images``; every other name is built by
  flow_grpo's own ``multi_score`` and called as flow_grpo calls it.

- **Editing flow_grpo's ``multi_score``**: register the factory in its
  ``score_functions`` dict, ``"spatialreward": spatialreward_score,`` (imported from
  this module), and route the source images to it with one line next to the
  ``image_similarity`` branch of ``_fn``::

      elif score_name == "spatialreward": scores, rewards = score_fns[score_name](images, prompts, metadata, ref_images)

  (flow_grpo's ``multi_score`` drops the scorers' metadata and returns ``{}``; the
  failures are still logged. The wrapper returns them.)

A failed item (unreadable image, unparseable judgment, server down after its
retries) is never 0.0. Its score follows ``on_error`` (``spatialreward.policy``);
the default here is ``nan``:

- ``nan``: NaN at that index; mask it before the advantage step (flow_grpo's
  ``PerPromptStatTracker`` takes ``np.mean``/``np.std`` of a group, so one NaN
  makes the whole group's advantages NaN).
- ``neutral``: the mean of the valid rewards of its group (same instruction and
  source images, as ``PerPromptStatTracker`` groups by prompt; the batch's mean when
  none is valid), so its per-prompt advantage is zero and nothing is NaN. The group
  is what this process sees: when a prompt's samples are split across ranks, the
  failed item gets the mean of the local ones.
- ``raise``: ``spatialreward.policy.ItemsFailed`` naming the failed items.
- ``none``: ``None`` (for code that checks each score; flow_grpo's trainers cannot
  make a tensor of it).

Every policy reports the failures in the metadata (``failed``, ``failed_count``,
``errors``) and logs their count.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Sequence

from ..adapters import _edited_images, _one_image, _source_images
from ..client import RewardClient
from ..policy import apply_policy, check_policy

logger = logging.getLogger("spatialreward.integrations.flow_grpo")

NAME = "spatialreward"
DEFAULT_ON_ERROR = "nan"
SUBSCORES = ("success", "overediting", "naturalness", "artifacts")


def spatialreward_score(device=None, *, url: str | None = None, on_error: str = DEFAULT_ON_ERROR,
                        client: RewardClient | None = None, text_to_image: bool = False, **client_kwargs):
    """A flow_grpo scorer factory (``device`` is accepted, as flow_grpo passes it, and
    unused: the model runs in ``spatialreward serve``). Returns ``_fn(images, prompts,
    metadata, ref_images=None)`` -> ``(scores, meta)``; ``scores`` a float32 array
    (a list with None under ``on_error="none"``). The server is ``url``, else
    ``SPATIALREWARD_URL``, else 127.0.0.1:23456. ``text_to_image=True``: the
    items are ``{prompt, image}`` (no source) for a server judging
    ``--protocol t2i-spatial`` (flow_grpo's text-to-image trainers); the
    ``neutral`` group is then the prompt, as ``PerPromptStatTracker``'s."""
    policy = check_policy(on_error)
    client = client or RewardClient(url, **client_kwargs)

    def _fn(images, prompts: Sequence[str], metadata=None, ref_images=None, **_: Any):
        import numpy as np

        items = _t2i_items(images, prompts, metadata) if text_to_image else _items(images, prompts, metadata, ref_images)
        keys: dict = {}
        # an outage after the client's retries fails each item (stage "server"), so the policy answers it too
        results = client._judge(items, (), keys=keys, whole_failures=True)
        errors = [None if r.ok else r.error for r in results]
        # neutral's group: the item's instruction and source images (as sent); unknown -> alone -> the batch mean
        groups = [keys.get(i, ("unknown", i)) for i in range(len(items))]
        outcome = apply_policy([r.reward for r in results], policy, groups=groups, errors=errors)
        if outcome.failed:
            logger.warning("spatialreward: %d of %d items could not be judged (items %s); on_error=%s",
                           len(outcome.failed), len(results), outcome.failed[:10], policy)
        if policy == "none":
            scores = outcome.values
        else:
            scores = np.asarray(outcome.values, dtype=np.float32)
        meta = {
            **outcome.report(),
            "errors": errors,
            "neutral": dict(outcome.neutral),
            "score": [r.score for r in results],  # 1.0 where reward >= the server's threshold
            "sc": [r.sc for r in results],
            "pq": [r.pq for r in results],
            **{name: [(r.scores or {}).get(name) for r in results] for name in SUBSCORES},
        }
        return scores, meta

    _fn.client = client
    _fn.on_error = policy
    return _fn


def flow_grpo_reward(url: str | None = None, *, client: RewardClient | None = None,
                     on_error: str = DEFAULT_ON_ERROR, text_to_image: bool = False, **client_kwargs):
    """``fn(images, prompts, metadata, ref_images=None)`` -> ``(rewards, info)``: the
    scorer above, under its earlier name (``spatialreward.adapters.flow_grpo_reward``)."""
    return spatialreward_score(None, url=url, on_error=on_error, client=client, text_to_image=text_to_image,
                               **client_kwargs)


def multi_score(device, score_dict: Mapping[str, float], *, url: str | None = None,
                on_error: str = DEFAULT_ON_ERROR, client: RewardClient | None = None, text_to_image: bool = False,
                **client_kwargs):
    """flow_grpo's ``multi_score(device, score_dict)``, same call and answer, with
    ``"spatialreward"`` among the names: it gets ``ref_images``; the other names are
    built and called by ``flow_grpo.rewards.multi_score`` itself. Returns
    ``_fn(images, prompts, metadata, ref_images=None, only_strict=True, **kwargs)`` ->
    ``({name: scores, ..., "avg": weighted sum}, {"spatialreward": meta, ...})``."""
    weight = score_dict.get(NAME)
    others = {name: w for name, w in score_dict.items() if name != NAME}
    ours = spatialreward_score(device, url=url, on_error=on_error, client=client, text_to_image=text_to_image,
                               **client_kwargs) if NAME in score_dict else None
    theirs, accepts = None, set()
    if others:
        try:
            from flow_grpo.rewards import multi_score as flow_grpo_multi_score
        except ImportError as exc:
            raise ImportError(f"score_dict names {sorted(others)}: they are flow_grpo's scorers, "
                              "and flow_grpo is not importable") from exc
        theirs = flow_grpo_multi_score(device, others)
        parameters = inspect.signature(theirs).parameters
        accepts = {"*"} if any(p.kind == p.VAR_KEYWORD for p in parameters.values()) else set(parameters)

    def _fn(images, prompts, metadata, ref_images=None, only_strict=True, **kwargs):
        details: dict = {}
        meta: dict = {}
        total = None
        if theirs is not None:
            extra = {"only_strict": only_strict, "ref_images": ref_images, **kwargs}
            their_details, their_meta = theirs(images, prompts, metadata,
                                               **{k: v for k, v in extra.items() if "*" in accepts or k in accepts})
            details = dict(their_details)
            total = list(details.pop("avg"))
            meta.update(their_meta or {})
        if ours is not None:
            scores, meta[NAME] = ours(images, prompts, metadata, ref_images=ref_images)
            details[NAME] = scores
            weighted = [None if s is None else weight * float(s) for s in scores]
            total = weighted if total is None else [None if a is None or b is None else a + b
                                                     for a, b in zip(total, weighted)]
        details["avg"] = total if total is not None else []
        return details, meta

    _fn.client = getattr(ours, "client", None)
    return _fn


def _items(images, prompts: Sequence[str], metadata, ref_images) -> list[dict]:
    edited = _edited_images(images)
    if metadata is None or isinstance(metadata, Mapping):  # flow_grpo's own example passes metadata = {}
        metadata = [metadata or {}] * len(edited)
    if not (len(edited) == len(prompts) == len(metadata)):
        raise ValueError(f"{len(edited)} images but {len(prompts)} prompts and {len(metadata)} metadata entries")
    references = None
    if ref_images is not None:  # a float C x H x W tensor per item becomes uint8 H x W x C, as images do
        references = [r if isinstance(r, list) else _one_image(r) for r in _source_images(ref_images)]
    if references is not None and len(references) != len(edited):
        raise ValueError(f"{len(edited)} images but {len(references)} ref_images")
    items = []
    for i, (image, prompt, meta) in enumerate(zip(edited, prompts, metadata)):
        meta = meta or {}
        source = meta.get("source", meta.get("source_image"))
        if source is None and references is not None:
            source = references[i]
        if source is None:
            raise ValueError(f"metadata[{i}] has no 'source' image (and no ref_images were given)")
        items.append({"source": source, "edited": image, "instruction": meta.get("instruction") or prompt})
    return items


def _t2i_items(images, prompts: Sequence[str], metadata) -> list[dict]:
    """Text-to-image items: the prompt and the image (``metadata[i]["relations"]``, if any, to check)."""
    generated = _edited_images(images)
    if metadata is None or isinstance(metadata, Mapping):
        metadata = [metadata or {}] * len(generated)
    if not (len(generated) == len(prompts) == len(metadata)):
        raise ValueError(f"{len(generated)} images but {len(prompts)} prompts and {len(metadata)} metadata entries")
    items = []
    for image, prompt, meta in zip(generated, prompts, metadata):
        item = {"prompt": prompt, "image": image}
        if isinstance(meta, Mapping) and meta.get("relations") is not None:
            item["relations"] = meta["relations"]
        items.append(item)
    return items
