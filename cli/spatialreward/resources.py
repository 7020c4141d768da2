"""Locate the files shipped in ``templates/`` (prompts, default config, report templates).

In an installed package they live in ``spatialreward/templates`` (the wheel
force-includes the repository's top-level ``templates/`` there); when running
from a source checkout they are found at the repository root.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def templates_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent.parent / "templates"):
        if (candidate / "prompts").is_dir():
            return candidate
    raise FileNotFoundError(f"spatialreward templates not found next to {_PACKAGE_DIR}")


def read_template(relative: str) -> str:
    """Text of a shipped template, byte-exact (no newline translation)."""
    return (templates_dir() / relative).read_bytes().decode("utf-8")
