"""The one definition of "a number" in JSON data read from models, configs and results files."""

from __future__ import annotations

import math


def is_number(value) -> bool:
    """A finite int or float (``True``/``False`` are not numbers, nor NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
