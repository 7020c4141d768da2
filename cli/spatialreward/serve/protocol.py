"""Request and response models of the reward server, validated at the edge:
unknown fields, wrong types and out-of-range values are a 422 before any work."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INSTRUCTION_CHARS = 4000
MAX_ID_CHARS = 256
OPTIONAL_FIELDS = ("regions", "reasoning", "raw")


class RewardItem(BaseModel):
    """One edit: base64 image files (PNG, JPEG or WebP), never URLs."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    source: str = Field(description="base64 of the source image file")
    edited: str = Field(description="base64 of the edited image file")
    instruction: str = Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS)
    meta: dict[str, Any] | None = None


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    items: list[RewardItem] = Field(min_length=1)
    return_: list[Literal["regions", "reasoning", "raw"]] = Field(default_factory=list, alias="return")


class ItemError(BaseModel):
    stage: str  # input, model or parse
    message: str


class RewardResult(BaseModel):
    """One item's result: the fields of the record ``spatialreward judge`` writes
    (without the images), plus ``score`` (1.0 when reward >= threshold)."""

    model_config = ConfigDict(extra="allow")

    id: str | None  # the request item's id (null when it had none)
    index: int  # the item's place in the request
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
