"""The prepare stage: an edit's images as the engine needs them, once per distinct image.

Decode (EXIF orientation, mode: ``images.load_image``), then the engine's own
preparation (``backend.prepare_image``: resize to the pixel budget; for HTTP
engines the PNG encoding too). It runs in a bounded pool of threads sized to the
machine, off the event loop, after admission (never before), and once per
distinct image among the edits in flight: the edited image serves SC and PQ of
every pass, a source shared by a group's candidates (or a server request's
items) is prepared once while any of them is in flight. Waiters are served
round-robin by flow, so one caller's large batch does not hold up another's
single edit. ``held_bytes`` counts the bytes the prepared images in flight hold
(the judge bounds the work it admits by it).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from .engine import DEFAULT_FLOW, FairLimiter
from .errors import InputError
from .images import load_image


def prepare_one(image, role: str, *, prepare_image, generation, pre_resize=None):
    """One image as the engine takes it, and the size it was decoded at:
    decoded (``load_image``: orientation, mode), the protocol's own resize
    (``pre_resize``), then the engine's preparation (``prepare_image``); a bad
    image raises InputError naming ``role``. The prepare stage runs this (and
    so does the Ray Data path, ``spatialreward.ray``)."""
    decoded = load_image(image, role=role)
    size = decoded.size
    try:
        if pre_resize is not None:
            decoded = pre_resize(decoded)
        if prepare_image is None:
            return decoded, size
        return prepare_image(decoded, generation), size
    except ValueError as exc:  # e.g. a size the model's processor refuses
        raise InputError(f"{role}: {exc}") from None


def image_bytes(value) -> int:
    """Bytes held by a prepared image (a PIL image, or an object with ``nbytes``)."""
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    return int(getattr(value, "nbytes", 0) or 0)


@dataclass(eq=False)
class Shared:
    key: object
    value: object = None  # what the requests carry
    size: tuple[int, int] | None = None  # (width, height) of the decoded image
    nbytes: int = 0
    refs: int = 0
    counted: bool = False
    task: asyncio.Future | None = field(default=None, repr=False)


def _key(image, role: str):
    """Identity of an image among the edits in flight, or None (not shared)."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", role, os.path.abspath(os.fspath(image)))
    if isinstance(image, bytes):
        return ("bytes", role, image)
    if isinstance(image, Image.Image):
        return ("pil", role, id(image))
    return None


class SharedImages:
    def __init__(self, prepare_image, generation, *, workers: int, pre_resize=None):
        self.prepare_image = prepare_image  # backend.prepare_image(decoded, generation) or None
        self.pre_resize = pre_resize  # the protocol's own resize before the engine's (reward-server) or None
        self.generation = generation
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spatialreward-prepare")
        self._limiter = FairLimiter(workers)
        self._entries: dict[object, Shared] = {}
        self.held_bytes = 0
        self.prepared = 0  # images prepared so far (distinct per edits in flight)

    @property
    def waiting(self) -> int:
        return self._limiter.waiting

    async def acquire(self, image, *, role: str, flow=DEFAULT_FLOW, order=None) -> Shared:
        """The prepared image (raises InputError for a bad one); ``release`` it when done."""
        key = _key(image, role)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            entry = Shared(key)
            entry.task = asyncio.ensure_future(self._load(entry, image, role, flow, order))
            if key is not None:
                self._entries[key] = entry
        entry.refs += 1
        try:
            await asyncio.shield(entry.task)
        except BaseException:
            self.release(entry)
            raise
        return entry

    def release(self, entry: Shared) -> None:
        entry.refs -= 1
        if entry.refs > 0:
            return
        if entry.key is not None and self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        if entry.counted:
            self.held_bytes -= entry.nbytes
            entry.counted = False
        entry.value = None

    async def _load(self, entry: Shared, image, role: str, flow, order) -> None:
        loop = asyncio.get_running_loop()
        async with self._limiter.slot(flow, order):
            value, size = await loop.run_in_executor(self._executor, self._prepare, image, role)
        entry.value, entry.size = value, size
        entry.nbytes = image_bytes(value)
        entry.counted = True
        self.held_bytes += entry.nbytes
        self.prepared += 1

    def _prepare(self, image, role: str):
        return prepare_one(image, role, prepare_image=self.prepare_image, generation=self.generation,
                           pre_resize=self.pre_resize)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
