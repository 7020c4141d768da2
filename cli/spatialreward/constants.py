"""Defaults and environment variables, read once here and nowhere else."""

from __future__ import annotations

import os

DEFAULT_MODEL = "SpatialReward/SpatialReward-8B"

# The published pixel budget (Qwen3-VL processor: sides multiples of 32).
MIN_PIXELS = 3136
MAX_PIXELS = 589824

SCORE_RANGE = 25.0  # raw scores are on 0..25
BBOX_RANGE = 1000  # bbox_2d coordinates are normalised to 0..1000

# Images larger than this many pixels are refused before decoding (decompression
# bombs). The variable is read once here and validated where it is used
# (max_image_pixels), so a bad value never breaks `--help`.
MAX_IMAGE_PIXELS_ENV = "SPATIALREWARD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
_MAX_IMAGE_PIXELS_RAW = os.environ.get(MAX_IMAGE_PIXELS_ENV)

# Qwen3-VL refuses images whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200
MAX_SOURCES = 8  # source images of one edit (multi-reference editing)

# Where the reward client finds ``spatialreward serve`` when it is given no
# address: this variable (a URL, or host:port), else the released reward
# server's default, which is also `serve`'s default port.
SERVER_URL_ENV = "SPATIALREWARD_URL"
SERVER_URL = os.environ.get(SERVER_URL_ENV, "").strip() or None
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 23456

# Print full tracebacks instead of one-line messages.
DEBUG = os.environ.get("SPATIALREWARD_DEBUG", "").lower() not in ("", "0", "false", "no")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def max_image_pixels() -> int:
    """The decompression-bomb limit: SPATIALREWARD_MAX_IMAGE_PIXELS (a positive
    integer; ``_`` separators allowed) or 64,000,000."""
    from .errors import ConfigError

    raw = _MAX_IMAGE_PIXELS_RAW
    if raw is None or not raw.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r}: must be a positive whole number of pixels, e.g. 100000000")
    return value
