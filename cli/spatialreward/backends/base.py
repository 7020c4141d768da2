"""The backend interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..config import Generation
from ..requests import Request


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int  # generated tokens
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)


class Backend(Protocol):
    model_id: str
    dtype: str  # e.g. "bfloat16"; part of the judge hash
    fingerprint: str  # identity of the loaded weights; part of the judge hash

    @classmethod
    def load(cls, model: str, *, revision: str | None, device: str, dtype: str, generation: Generation) -> "Backend":
        """Load the model, or raise ModelNotFoundError with a one-line how-to."""

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        """Answer ``requests`` (one batch): exactly one answer per request, in
        order. ``constrained`` applies the JSON-schema grammar of each request's
        kind; when sampling, each request is drawn with its own ``seed``.
        Raises on model failure."""
