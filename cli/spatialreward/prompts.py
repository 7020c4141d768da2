"""The two SpatialReward-8B prompts, byte-identical to the published protocol.

The texts live in ``templates/prompts/``. Their odd details (the PQ prompt's
doubled braces, trailing spaces on five PQ lines) are what the model was
trained on and must not be "fixed"; ``tests/test_prompts.py`` pins their
sha256.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from .resources import read_template

INSTRUCTION_SLOT = "{instruction}"


@lru_cache(maxsize=1)
def _sc_template() -> str:
    text = read_template("prompts/sc.txt")
    if text.count(INSTRUCTION_SLOT) != 1:
        raise RuntimeError("templates/prompts/sc.txt must hold exactly one {instruction} slot")
    return text


@lru_cache(maxsize=1)
def render_pq() -> str:
    """The PQ (perceptual quality) prompt, exactly as the model sees it."""
    return read_template("prompts/pq.txt")


def render_sc(instruction: str) -> str:
    """The SC (semantic consistency) prompt with ``instruction`` filled in.

    The instruction is inserted verbatim (callers strip surrounding whitespace
    when reading manifests); only the template's single slot is replaced, so an
    instruction containing braces or ``{instruction}`` is left untouched.
    """
    head, tail = _sc_template().split(INSTRUCTION_SLOT)
    return head + instruction + tail


def prompts_fingerprint() -> str:
    """sha256 over both prompt templates: part of every record's config hash."""
    digest = hashlib.sha256()
    digest.update(_sc_template().encode("utf-8"))
    digest.update(b"\0")
    digest.update(render_pq().encode("utf-8"))
    return digest.hexdigest()
