"""Downscaled, embedded thumbnails for the HTML report.

Each distinct image path is read once and embedded once (as a JPEG ``data:``
URI), however many rows show it: the candidates of a group share their source.
An image that cannot be read becomes an "unavailable" entry with a short
reason, never an exception: the report shows a placeholder in its place.
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..constants import max_image_pixels
from ..errors import InputError
from ..images import to_rgb

THUMBNAIL_SIDE = 192  # longest side, pixels
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    """An embedded image (``uri``, ``width``, ``height``) or, when ``uri`` is
    None, an unavailable one with the ``reason``."""

    uri: str | None
    width: int = 0
    height: int = 0
    reason: str = ""

    def to_json(self) -> dict:
        if self.uri is None:
            return {"x": self.reason}
        return {"u": self.uri, "w": self.width, "h": self.height}


def make_thumbnail(path: str | os.PathLike, *, side: int = THUMBNAIL_SIDE, quality: int = JPEG_QUALITY) -> Thumbnail:
    """Read ``path`` and return it downscaled to ``side`` pixels on its longest
    side (never upscaled), EXIF orientation applied (as the judge saw it), as a
    base64 JPEG data URI. Any failure gives an unavailable Thumbnail."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = Path(path)
    if not name.is_file():
        return Thumbnail(None, reason="file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: we check the size ourselves
            with Image.open(name) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    return Thumbnail(None, reason="zero-size image")
                if width * height > max_image_pixels():
                    return Thumbnail(None, reason=f"{width}x{height} is over the image size limit")
                image.draft("RGB", (side, side))  # JPEG: decode at the smallest scale >= side (much faster)
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)  # as the judge saw it
                image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=False)
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return Thumbnail(None, reason="not a readable image")
    except InputError as exc:
        return Thumbnail(None, reason=exc.message.split(": ", 1)[-1])
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Thumbnail(None, reason=f"cannot read image ({exc.__class__.__name__})")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{data}", image.width, image.height)


class ThumbnailStore:
    """Distinct image paths -> short keys; ``build()`` makes every thumbnail
    once (in threads: Pillow releases the GIL while decoding)."""

    def __init__(self, *, side: int = THUMBNAIL_SIDE, quality: int = JPEG_QUALITY) -> None:
        self.side = side
        self.quality = quality
        self._keys: dict[str, str] = {}

    def key(self, path: str) -> str:
        key = self._keys.get(path)
        if key is None:
            key = self._keys[path] = f"i{len(self._keys)}"
        return key

    def __len__(self) -> int:
        return len(self._keys)

    def iter_build(self, workers: int | None = None):
        """(key, Thumbnail.to_json()) for every registered path, in
        registration order, each as soon as it is made (in threads: Pillow
        releases the GIL while decoding and resizing). At most a few
        thumbnails per worker are held at once."""
        paths = list(self._keys)
        workers = workers or min(8, os.cpu_count() or 1)

        def one(path: str) -> dict:
            return make_thumbnail(path, side=self.side, quality=self.quality).to_json()

        if workers <= 1 or len(paths) <= 1:
            for path in paths:
                yield self._keys[path], one(path)
            return
        window = workers * 4
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = deque()
            for path in paths:
                pending.append((path, pool.submit(one, path)))
                if len(pending) >= window:
                    done_path, future = pending.popleft()
                    yield self._keys[done_path], future.result()
            while pending:
                done_path, future = pending.popleft()
                yield self._keys[done_path], future.result()

    def build(self, workers: int | None = None) -> dict[str, dict]:
        """{key: Thumbnail.to_json()} for every registered path."""
        return dict(self.iter_build(workers))
