"""Image loading with explicit, per-file failures (never a silent placeholder).

Every image becomes the 8-bit RGB picture a viewer would show (``to_rgb``):
16-bit and 32-bit greyscale are scaled, not clipped; transparency is composited
over white (as the transformers image processors do); an image whose range is
not defined (32-bit integers outside 0..65535, floats outside 0..1) or whose
mode has no faithful RGB conversion is refused, never guessed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_ASPECT_RATIO, max_image_pixels
from .errors import InputError

log = logging.getLogger("spatialreward")

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


def load_image(source, *, max_pixels: int | None = None, role: str = "image") -> Image.Image:
    """Open ``source`` (a path, a PIL image, or the bytes of an image file) as an RGB image.

    Refuses missing or unreadable files, non-images, zero-size images and
    images over ``max_pixels`` (checked from the header, before decoding, so a
    decompression bomb costs nothing). EXIF orientation is applied, as any
    viewer would show the photo, and the mode converted by ``to_rgb``.
    """
    if max_pixels is None:
        max_pixels = max_image_pixels()
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, role, "<PIL image>")
        # An image opened from a file keeps its EXIF orientation: apply it, as for a path.
        with _pillow_warnings_to_log("<PIL image>"):
            return to_rgb(ImageOps.exif_transpose(source), role=role, name="<PIL image>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        # An image file received in memory (the reward server): the same checks as a file.
        name = f"<{len(source):,} bytes>"
        if not len(source):
            raise InputError(f"{role}: empty image data")
        return _open(io.BytesIO(source), name, max_pixels, role)
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise InputError(f"{role} {name}: file not found")
    if not path.is_file():
        raise InputError(f"{role} {name}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{role} {name}: empty file")
    return _open(path, name, max_pixels, role)


def _open(file, name: str, max_pixels: int, role: str) -> Image.Image:
    try:
        with _own_size_limit(), _pillow_warnings_to_log(name):  # only the header is read here
            image = Image.open(file)
        with image, _pillow_warnings_to_log(name):  # leaving closes the file, not the decoded picture
            _check_size(image.size, max_pixels, role, name)
            image.load()
            if getattr(image, "map", None) is not None:  # pixels mapped from the file: not ours to keep
                image = image.copy()
            # In place: the image is ours, and an upright one (most) is not copied (a copy of a
            # 24-megapixel picture is 92 MiB more while it is made).
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image, role=role, name=name)
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(f"{role} {name}: not a readable image ({exc.__class__.__name__})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{role} {name}: corrupt or truncated image ({exc})") from None


@contextlib.contextmanager
def _pillow_warnings_to_log(name: str):
    """Pillow's warnings (e.g. a truncated EXIF block) go to the log, naming the
    file, instead of leaking onto stderr as Python warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("%s: %s", name, warning.message)


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_DIRECT_MODES = ("1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def to_rgb(image: Image.Image, *, role: str = "image", name: str = "<PIL image>") -> Image.Image:
    """The 8-bit RGB picture a viewer shows for ``image``, or InputError."""
    import numpy as np

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _DIRECT_MODES:
        return image.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise InputError(f"{role} {name}: 32-bit integer image with values {low}..{high} outside 0..65535: "
                             "its range is not defined; save it as 8- or 16-bit")
        grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError(f"{role} {name}: 32-bit float image with values outside 0..1 (or NaN): its range is "
                             "not defined; save it as 8- or 16-bit")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").convert("RGB")
    raise InputError(f"{role} {name}: image mode {mode} has no faithful RGB conversion; save it as 8-bit RGB")


def _check_size(size: tuple[int, int], max_pixels: int, role: str, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{role} {name}: zero-size image ({width}x{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(f"{role} {name}: {width}x{height} is more than {MAX_ASPECT_RATIO} times as long as it is "
                         "wide, which Qwen3-VL cannot take")
    if width * height > max_pixels:
        raise InputError(
            f"{role} {name}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise SPATIALREWARD_MAX_IMAGE_PIXELS if intended)"
        )
