"""Defaults and environment variables, read once here and nowhere else."""

from __future__ import annotations

import os

DEFAULT_MODEL = "SpatialReward/SpatialReward-8B"

# The published pixel budget (Qwen3-VL processor: sides multiples of 32).
MIN_PIXELS = 3136
MAX_PIXELS = 589824

SCORE_RANGE = 25.0  # raw scores are on 0..25
BBOX_RANGE = 1000  # bbox_2d coordinates are normalised to 0..1000

# Images larger than this many pixels are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = int(os.environ.get("SPATIALREWARD_MAX_IMAGE_PIXELS", 64_000_000))

# Print full tracebacks instead of one-line messages.
DEBUG = os.environ.get("SPATIALREWARD_DEBUG", "").lower() not in ("", "0", "false", "no")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
