"""Image loading with explicit, per-file failures (never a silent placeholder)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_IMAGE_PIXELS
from .errors import InputError

_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _own_size_limit():
    """Replace Pillow's decompression-bomb check by ``_check_size`` (which names
    the file, the size and the limit, and honours a raised limit)."""
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(source, *, max_pixels: int = MAX_IMAGE_PIXELS, role: str = "image") -> Image.Image:
    """Open ``source`` (a path or a PIL image) as an RGB image.

    Refuses missing or unreadable files, non-images, zero-size images and
    images over ``max_pixels`` (checked from the header, before decoding, so a
    decompression bomb costs nothing). EXIF orientation is applied, as any
    viewer would show the photo.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, role, "<PIL image>")
        # An image opened from a file keeps its EXIF orientation: apply it, as for a path.
        image = ImageOps.exif_transpose(source)
        return image if image.mode == "RGB" else image.convert("RGB")
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise InputError(f"{role} {name}: file not found")
    if not path.is_file():
        raise InputError(f"{role} {name}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{role} {name}: empty file")
    try:
        with _own_size_limit():  # only the header is read here
            image = Image.open(path)
        with image:
            _check_size(image.size, max_pixels, role, name)
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(f"{role} {name}: not a readable image ({exc.__class__.__name__})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{role} {name}: corrupt or truncated image ({exc})") from None


def _check_size(size: tuple[int, int], max_pixels: int, role: str, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{role} {name}: zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{role} {name}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise SPATIALREWARD_MAX_IMAGE_PIXELS if intended)"
        )
