"""The SpatialReward-8B prompts, byte-identical to the published protocols.

The texts live in ``templates/prompts/``; ``protocols.py`` says which a
protocol uses. Their odd details (the PQ prompt's doubled braces, trailing
spaces on five PQ lines, the reward server's trailing space and missing final
newline) are what the model was trained and served with and must not be
"fixed"; ``tests/test_prompts.py`` pins their sha256.
"""

from __future__ import annotations

from .protocols import INSTRUCTION_SLOT, fingerprint
from .protocols import render_pq as _render_pq
from .protocols import render_sc as _render_sc

__all__ = ["INSTRUCTION_SLOT", "render_sc", "render_pq", "prompts_fingerprint"]


def render_pq(protocol: str | None = None) -> str:
    """The PQ (perceptual quality) prompt, exactly as the model sees it."""
    return _render_pq(protocol=protocol)


def render_sc(instruction: str, protocol: str | None = None, sources: int = 1) -> str:
    """The SC (semantic consistency) prompt with ``instruction`` filled in
    (``sources`` source images: the multi-image prompt where the protocol has one)."""
    return _render_sc(instruction, protocol=protocol, sources=sources)


def prompts_fingerprint(protocol: str | None = None) -> str:
    """sha256 over the protocol's prompt templates: part of every record's judge hash."""
    return fingerprint(protocol)
