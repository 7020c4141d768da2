"""One edit to judge, as read from a manifest or given to the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


@dataclass
class Sample:
    id: str
    source: Any  # path or PIL image
    edited: Any  # path or PIL image
    instruction: str
    meta: dict = field(default_factory=dict)
    group: str | None = None  # multi-candidate source: the group id
    group_size: int | None = None
    candidate: int | None = None  # index within the group
    origin: str | None = None  # "manifest.jsonl:12": where it was read
    error: InputError | None = None  # an input problem found while reading

    @property
    def category(self) -> str | None:
        value = self.meta.get("category")
        return value if isinstance(value, str) else None
