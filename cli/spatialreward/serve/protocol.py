"""Request and response models of the reward server, validated at the edge:
unknown fields, wrong types and out-of-range values are a 422 before any work.

A client may send ``Idempotency-Key: KEY`` (the same on every retry of one
request, as ``spatialreward.client`` does): the server judges that request
once and answers every attempt with the same results; the key with another
body is a 422."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..constants import MAX_SOURCES

MAX_INSTRUCTION_CHARS = 4000
MAX_ID_CHARS = 256
OPTIONAL_FIELDS = ("regions", "reasoning", "raw")
IDEMPOTENCY_HEADER = "Idempotency-Key"


class RewardItem(BaseModel):
    """One edit: base64 image files (PNG, JPEG or WebP), never URLs. ``source``
    is one image, or a list of 1 to ``MAX_SOURCES`` (8) in their order (a
    multi-reference edit: the model sees every source, then the edited image);
    a longer list is a 422.

    Or one text-to-image item (a server started with ``--protocol
    t2i-spatial``): ``{"prompt", "image"}`` and optionally ``"relations":
    [[subject, relation, object], ...]`` to check. ``prompt`` also stands in for
    a missing ``instruction``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    source: Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_SOURCES)], None] = Field(
        default=None, description=f"base64 of the source image file, or a list of 1 to {MAX_SOURCES} of them in order")
    edited: str = Field(description="base64 of the edited image file (text-to-image: the image)")
    instruction: str = Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS)
    meta: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_to_image(cls, data: Any) -> Any:
        """``{"prompt", "image"[, "relations"]}`` as the fields above; ``prompt``
        for a missing ``instruction``. Anything ambiguous is a 422."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "prompt" in data:
            if "instruction" in data:
                raise ValueError("give 'instruction' or 'prompt', not both")
            data["instruction"] = data.pop("prompt")
        if "image" in data:
            if "edited" in data or "source" in data:
                raise ValueError("a text-to-image item is {prompt, image}: no 'source' or 'edited' with 'image'")
            data["edited"] = data.pop("image")
        if "relations" in data:
            relations = data.pop("relations")
            if "source" in data:
                raise ValueError("'relations' belongs to a text-to-image item {prompt, image, relations}")
            if not (isinstance(relations, list) and all(
                    isinstance(r, list) and len(r) == 3 and all(isinstance(p, str) and p.strip() for p in r)
                    for r in relations)):
                raise ValueError("'relations' must be a list of [subject, relation, object] strings")
            meta = data.get("meta")
            data["meta"] = {**(meta if isinstance(meta, dict) else {}), "relations": relations}
        return data


Policy = Literal["none", "nan", "raise", "neutral"]


class RewardRequest(BaseModel):
    """``on_error`` (optional): the response also carries ``rewards`` and
    ``scores`` as flat lists under that failure policy (``spatialreward.policy``),
    with ``failed`` (the failed items' indexes); ``raise`` gives ``error`` instead
    of the lists when an item failed. ``results`` are the same either way."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    items: list[RewardItem] = Field(min_length=1)
    return_: list[Literal["regions", "reasoning", "raw"]] = Field(default_factory=list, alias="return")
    on_error: Policy | None = None


class ItemError(BaseModel):
    stage: str  # input, model or parse
    message: str


class RewardResult(BaseModel):
    """One item's result: the fields of the record ``spatialreward judge`` writes
    (without the images), plus ``score`` (1.0 when reward >= threshold) and
    ``sources`` (how many source images the item had)."""

    model_config = ConfigDict(extra="allow")

    id: str | None  # the request item's id (null when it had none)
    index: int  # the item's place in the request
    sources: int  # the item's source images (1 for a single one)
    status: Literal["ok", "error"]
    reward: float | None
    score: float | None
    overall: float | None
    sc: float | None
    pq: float | None
    scores: dict[str, float] | None
    error: ItemError | None


class RewardResponse(BaseModel):
    results: list[RewardResult]
