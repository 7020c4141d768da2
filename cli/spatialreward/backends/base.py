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
    # How many requests one generate() call should get (None: the judge's
    # batch_size, --batch-size), and how many generate() calls may run at once,
    # each in its own thread (a backend with concurrency > 1 is thread-safe).
    max_batch: int | None
    concurrency: int

    @classmethod
    def load(cls, model: str, *, revision: str | None, device: str, dtype: str, generation: Generation,
             **options) -> "Backend":
        """Load the model, or raise ModelNotFoundError / EngineError (exit 3) or
        ConfigError (exit 2) with a one-line how-to. ``options``: the backend's
        own settings (``--base-url``, ``--tensor-parallel-size``, ...)."""

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        """Answer ``requests`` (one batch): exactly one answer per request, in
        order. ``constrained`` applies the JSON-schema grammar of each request's
        kind; when sampling, each request is drawn with its own ``seed``.
        Raises on model failure."""


def batch_limit(backend, batch_size: int) -> int:
    """Requests per generate() call for ``backend``: its ``max_batch``, or the
    judge's ``batch_size`` when it has none."""
    return getattr(backend, "max_batch", None) or batch_size


def concurrency_of(backend) -> int:
    """generate() calls that may run at once on ``backend`` (1 unless it says more)."""
    return max(1, int(getattr(backend, "concurrency", None) or 1))
