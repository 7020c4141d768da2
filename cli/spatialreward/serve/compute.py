"""``POST /compute``: Flow-Factory's remote reward protocol, over the same path as ``/v1/rewards``.

Flow-Factory's ``RemoteRewardClient`` (``flow_factory/rewards/my_reward_remote.py``,
used by ``RemotePointwiseRewardModel`` and ``RemoteGroupwiseRewardModel``) posts
one JSON body per reward batch (pointwise) or per group (groupwise)::

    {"prompt": [str, ...],                   # one per sample: the edit instruction
     "image": [b64 PNG, ...] | null,          # one per sample: the edited image
     "video": null,
     "condition_images": [[b64 PNG, ...], ...] | null,   # per sample: its source image(s)
     "condition_videos": null,
     "kwargs": {...} | null}                  # extra sample fields; ignored here

and reads ``data["rewards"]`` into ``torch.tensor`` (a truthy ``error`` key
raises). This module validates that body (``ComputeBody``: unknown keys, missing
images and mismatched lengths are a 422 naming the field) and translates it into
a ``RewardRequest`` (item i: ``source`` = ``condition_images[i]``, ``edited`` =
``image[i]``, ``instruction`` = ``prompt[i]``), so admission, decoding and
judging are the server's one path; the answer is the rewards under a failure
policy (``spatialreward.policy``).

Two optional fields that Flow-Factory's client does not send (other callers may):
``on_error`` (``none|nan|raise|neutral``; default ``neutral``: the caller turns
``rewards`` straight into a tensor, so a failed item must be a number, and the
group mean gives it zero advantage) and ``group_by`` (``prompt``, the default:
the group of an item for ``neutral`` is the items with the same prompt and the
same condition images; ``request``: the whole request is one group). A
groupwise call sends one group (its samples share the prompt and condition
images), so the default groups it as a whole too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..constants import MAX_SOURCES
from .protocol import Policy, RewardRequest
from .serving import DISCONNECT_POLL_S, ClientGone, InvalidRequest, parse_json_body, validation_errors

DEFAULT_POLICY = "neutral"
ROUTE = "/compute"
_SHOWN_INPUT_CHARS = 200  # a 422's "input" is dropped when longer (a base64 image)


class ComputeBody(BaseModel):
    """The body Flow-Factory's ``RemoteRewardClient`` sends, plus our optional ``on_error`` and ``group_by``."""

    model_config = ConfigDict(extra="forbid")

    prompt: list[str] = Field(min_length=1, description="the edit instruction of each sample")
    image: list[str] | None = Field(default=None, description="base64 of each sample's edited image (PNG, JPEG, WebP)")
    video: list | None = None
    condition_images: list[list[str]] | None = Field(
        default=None, description=f"each sample's source images (1 to {MAX_SOURCES}, base64, in order)")
    condition_videos: list | None = None
    kwargs: dict[str, Any] | None = None  # the samples' extra fields (Flow-Factory's **kwargs): not used
    on_error: Policy | None = None
    group_by: Literal["prompt", "request"] = "prompt"


@dataclass
class ComputeCall:
    """A validated ``/compute`` body as the server's request, with its failure policy."""

    request: RewardRequest
    policy: str
    group_by: str


def _error(field: list, message: str) -> dict:
    return {"type": "value_error", "loc": ["body", *field], "msg": message}


def _shown(errors: list[dict]) -> list[dict]:
    """Validation errors without inputs too long to echo (base64 images)."""
    for error in errors:
        error.pop("url", None)
        if "input" in error:
            try:
                shown = json.dumps(error["input"])
            except (TypeError, ValueError):
                shown = None
            if shown is None or len(shown) > _SHOWN_INPUT_CHARS:
                error.pop("input")
    return errors


def _translated_loc(loc: list) -> list:
    """A ``RewardRequest`` error location as the ``/compute`` field it came from."""
    if len(loc) >= 3 and loc[0] == "items" and isinstance(loc[1], int):
        index, field, rest = loc[1], loc[2], list(loc[3:])
        if field == "instruction":
            return ["prompt", index, *rest]
        if field == "edited":
            return ["image", index, *rest]
        if field == "source":
            return ["condition_images", index, *[part for part in rest if isinstance(part, int)]]
    return list(loc)


def parse_compute(body, text_to_image: bool = False) -> ComputeCall:
    """The body (bytes, or a list of chunks) as a ``ComputeCall``, or ``InvalidRequest`` (422)."""
    if isinstance(body, list):
        body = b"".join(body)
    data = parse_json_body(body)  # the base64 strings kept out of the JSON parse
    try:
        parsed = ComputeBody.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_shown(validation_errors(exc))) from None
    return to_reward_request(parsed, text_to_image)


def to_reward_request(body: ComputeBody, text_to_image: bool = False) -> ComputeCall:
    """The server's ``RewardRequest`` for a ``/compute`` body; ``InvalidRequest`` names the field at fault.
    ``text_to_image`` (a server judging ``--protocol t2i-spatial``): ``condition_images``
    null, each sample ``{prompt, image}``."""
    problems = []
    count = len(body.prompt)
    if body.video is not None:
        problems.append(_error(["video"], "video is not supported: SpatialReward judges image edits (send null)"))
    if body.condition_videos is not None:
        problems.append(_error(["condition_videos"], "condition_videos is not supported: SpatialReward judges "
                               "image edits (send null)"))
    if body.image is None:
        problems.append(_error(["image"], "image is required: the edited image of each sample (base64 PNG)"))
    elif len(body.image) != count:
        problems.append(_error(["image"], f"{len(body.image)} images for {count} prompts: one per sample"))
    if text_to_image:
        if body.condition_images is not None:
            problems.append(_error(["condition_images"], "this server judges text-to-image (--protocol "
                                   "t2i-spatial): send condition_images null"))
    elif body.condition_images is None:
        problems.append(_error(["condition_images"], "condition_images is required: the source image(s) of each "
                               "sample; in Flow-Factory put \"condition_images\" in the reward model's "
                               "required_fields"))
    elif len(body.condition_images) != count:
        problems.append(_error(["condition_images"], f"{len(body.condition_images)} condition image lists for "
                               f"{count} prompts: one list per sample"))
    else:
        for index, sources in enumerate(body.condition_images):
            if not 1 <= len(sources) <= MAX_SOURCES:
                problems.append(_error(["condition_images", index], f"{len(sources)} condition images; an edit "
                                       f"takes 1 to {MAX_SOURCES} source images"))
    if problems:
        raise InvalidRequest(problems)
    policy = body.on_error or DEFAULT_POLICY
    if text_to_image:
        items = [{"prompt": prompt, "image": image} for prompt, image in zip(body.prompt, body.image)]
    else:
        items = [{"source": sources[0] if len(sources) == 1 else sources, "edited": edited, "instruction": prompt}
                 for prompt, edited, sources in zip(body.prompt, body.image, body.condition_images)]
    try:
        request = RewardRequest.model_validate({"items": items, "on_error": policy})
    except ValidationError as exc:
        errors = json.loads(exc.json(include_url=False))
        for error in errors:
            error["loc"] = ["body", *_translated_loc(error["loc"])]
        raise InvalidRequest(_shown(errors)) from None
    return ComputeCall(request, policy, body.group_by)


async def compute(service, body, *, disconnected=None) -> dict:
    """The answer to one ``/compute`` body: parsed off the event loop, judged by
    ``service.score`` (the ``/v1/rewards`` path), then ``service.policy_lists``
    (which counts the failed items in ``/metrics`` under route ``/compute``).

    ``{"rewards": [...], "scores": [...], "failed": [indexes], "on_error": policy,
    "errors": [{"index", "stage", "message"}, ...]}``; under ``raise`` (or
    ``neutral`` with every item failed) ``error`` replaces the lists.
    ``disconnected``: an async callable, true once the client has gone (the
    work is then cancelled and ``ClientGone`` raised)."""
    call = await service._off_loop(parse_compute, body, bool(getattr(service.judge, "t2i", False)))
    if isinstance(body, list):
        body.clear()  # the body is held once: the route's list of chunks is emptied here
    del body
    groups: list = []
    work = asyncio.ensure_future(service.score(call.request, groups=groups))
    del call.request
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S if disconnected else None)
            if not work.done() and disconnected is not None and await disconnected():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                raise ClientGone()
    except asyncio.CancelledError:
        work.cancel()
        raise
    results = work.result()
    answer = service.policy_lists(results, call.policy, groups if call.group_by == "prompt" else None, route=ROUTE)
    answer["errors"] = [{"index": i, **(results[i].get("error") or {})} for i in answer["failed"]]
    return answer
