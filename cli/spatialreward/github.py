"""GitHub Actions integration: step outputs, job summary, annotations.

Active when the runner's variables are set (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY);
annotations are printed when GITHUB_ACTIONS=true. Nothing here is GitHub-only
in effect: the same Markdown can be written anywhere with ``--summary-md``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, *, title: str | None = None) -> str:
    """A workflow command line: ``::error title=T::message``."""
    props = f" title={_escape_property(title)}" if title else ""
    return f"::{level}{props}::{_escape_data(message)}"


def write_outputs(values: dict[str, str], path: str | os.PathLike | None = None) -> bool:
    """Append ``name=value`` lines (heredoc form for multi-line values) to $GITHUB_OUTPUT."""
    target = path or os.environ.get("GITHUB_OUTPUT")
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as handle:
        for name, value in values.items():
            value = "" if value is None else str(value)
            if "\n" in value:
                marker = f"EOF_{uuid.uuid4().hex}"
                handle.write(f"{name}<<{marker}\n{value}\n{marker}\n")
            else:
                handle.write(f"{name}={value}\n")
    return True


def append_step_summary(markdown: str, path: str | os.PathLike | None = None) -> bool:
    target = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with open(Path(target), "a", encoding="utf-8") as handle:
        handle.write(markdown.rstrip("\n") + "\n")
    return True


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"
