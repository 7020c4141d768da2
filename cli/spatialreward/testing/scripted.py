"""A scripted backend for tests: answers from a JSON script, every request recorded.

A random tiny model ignores its images, so tests of *what the model is given*
(which image, in which order, with which prompt) record the requests instead
of relying on answers. ``ScriptedBackend`` records each ``generate()`` call and
answers from a script, chosen per request by, in order of precedence:

- ``by_instruction``: ``{instruction: {"sc": TEXT}}`` for SC requests;
- ``by_image``: ``{image_digest(edited): {"sc": TEXT, "pq": TEXT}}``;
- ``scores_from_image``: ``true`` answers every request with valid JSON whose
  scores (0..25) are derived from the edited image's digest: deterministic,
  different images score differently (``hashed_scores``; for benchmark tests);
- ``echo``: ``true`` makes answers encode the item (for ordering tests): SC
  success = the instruction's last whole number modulo 26 (``"item 123"`` ->
  19; an instruction without one: a digest of its text), overediting 20; PQ
  naturalness = ``echo_pq(edited image)`` (from its pixel digest), artifacts 20;
- ``constrained``: ``{"sc": TEXT, "pq": TEXT}`` for grammar-constrained calls;
- ``t2i_ground``: ``true`` answers t2i-spatial requests as a perfect grounding
  model would for the generated scenes of ``testing.scenes`` (objects found by
  their colour in the pixels, boxes, relations from the boxes, scores);
- ``answers``: ``{"sc": TEXT, "pq": TEXT, "t2i": TEXT}``, the defaults.

A text ``"!raise MESSAGE"`` makes ``generate()`` raise for that request's
batch. ``"delay_s": SECONDS`` makes each ``generate()`` call sleep that long
first, as a slow model would (for tests of progress and interruption; it does
not change the answers, so it is not part of the fingerprint); ``"record":
false`` keeps no ``calls`` (for load tests and benchmarks, whose memory would
otherwise grow with every request). From the CLI it
is ``--backend scripted --model SCRIPT.json`` (an entry point of the
``spatialreward.backends`` group).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

from ..config import Generation
from ..errors import ModelNotFoundError
from ..requests import Request
from ..backends.base import Answer

SC_OK = ('{"edit_region": [{"id": 0, "label": "red square", "bbox_2d": [100, 200, 300, 400]}], '
         '"reasoning": "<|bbox_0|> A red square was added. <|global|> Clean.", "score": [20, 18]}')
PQ_OK = '{"reasoning": "Looks natural.", "score": [22, 21]}'


def echo_sc(instruction: str) -> int:
    """The success score the echo mode gives an instruction."""
    import re

    numbers = re.findall(r"\d+", instruction)
    if numbers:
        return int(numbers[-1]) % 26
    return int(hashlib.sha1(instruction.encode()).hexdigest()[:8], 16) % 26


def echo_pq(image) -> int:
    """The naturalness score the echo mode gives an edited image."""
    return int(image_digest(image)[:8], 16) % 26


def image_digest(image) -> str:
    """Content digest of a PIL image (mode, size and pixels)."""
    digest = hashlib.sha1(f"{image.mode}|{image.size}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


def hashed_scores(image) -> tuple[int, int, int, int]:
    """Four scores in 0..25 from the image's digest: (success, overediting, naturalness, artifacts)."""
    digest = bytes.fromhex(image_digest(image))
    return tuple(b % 26 for b in digest[:4])


def hashed_answer(kind: str, image) -> str:
    s1, s2, n, a = hashed_scores(image)
    if kind == "sc":
        return json.dumps({"edit_region": [], "reasoning": "scripted", "score": [s1, s2]})
    return json.dumps({"reasoning": "scripted", "score": [n, a]})


class ScriptedBackend:
    dtype = "none"
    max_batch: int | None = None  # the judge's --batch-size
    concurrency = 1

    def __init__(self, script: dict | None = None, *, model_id: str = "scripted"):
        self.script = {"answers": {"sc": SC_OK, "pq": PQ_OK}, **(script or {})}
        self.model_id = model_id
        self.delay_s = float(self.script.pop("delay_s", 0) or 0)
        # "record": false keeps no calls (long runs: load tests, benchmarks); answers unchanged.
        self.record = bool(self.script.pop("record", True))
        self.fingerprint = "scripted:" + hashlib.sha256(
            json.dumps(self.script, sort_keys=True).encode()).hexdigest()[:16]
        self.calls: list[dict] = []  # one per generate(): {"requests", "constrained", "generation"}

    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None) -> "ScriptedBackend":
        path = Path(model)
        if not path.is_file():
            raise ModelNotFoundError(f"scripted backend: script {model!r} is not a file")
        return cls(json.loads(path.read_text(encoding="utf-8")), model_id=model)

    def text_for(self, request: Request, constrained: bool) -> str:
        script = self.script
        if request.kind == "sc":
            instruction = request.prompt.rsplit("Editing instruction: ", 1)[-1].removesuffix("\n")
            found = script.get("by_instruction", {}).get(instruction, {}).get("sc")
            if found is not None:
                return found
        found = script.get("by_image", {}).get(image_digest(request.images[-1]), {}).get(request.kind)
        if found is not None:
            return found
        if request.kind == "t2i" and script.get("t2i_ground"):
            from .scenes import ground_from_pixels

            prompt = request.prompt.rsplit("Text-to-image prompt: ", 1)[-1].removesuffix("\n")
            return ground_from_pixels(request.images[-1], prompt)
        if script.get("scores_from_image"):
            return hashed_answer(request.kind, request.images[-1])
        if script.get("echo"):
            if request.kind == "sc":
                return ('{"edit_region": [], "reasoning": "echo", "score": [%d, 20]}'
                        % echo_sc(request.prompt.rsplit("Editing instruction: ", 1)[-1].removesuffix("\n")))
            return '{"reasoning": "echo", "score": [%d, 20]}' % echo_pq(request.images[-1])
        if constrained and request.kind in script.get("constrained", {}):
            return script["constrained"][request.kind]
        return script["answers"][request.kind]

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        if self.record:
            self.calls.append({"requests": list(requests), "constrained": constrained, "generation": generation})
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        texts = [self.text_for(r, constrained) for r in requests]
        for text in texts:
            if text.startswith("!raise"):
                raise RuntimeError(text.removeprefix("!raise").strip() or "scripted failure")
        return [Answer(text=t, tokens=len(t), finished=True) for t in texts]
