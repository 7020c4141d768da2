"""Turn one edit into the model's two chat requests, in the published order.

SC: one user turn with the source image, the edited image, then the SC prompt
with the instruction. PQ: one user turn with the edited image, then the PQ
prompt. Both are rendered by the model's own chat template (in the backend).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .prompts import render_pq, render_sc

SC, PQ = "sc", "pq"


@dataclass(frozen=True)
class Request:
    kind: str  # "sc" or "pq"
    images: tuple[Image.Image, ...]
    prompt: str
    # Sampling seed of this request alone (used only when sampling): derived by
    # the judge from the run seed, the sample id, the pass, the kind and the
    # attempt, so a request draws the same tokens whatever batch it lands in.
    seed: int = 0

    def messages(self) -> list[dict]:
        content = [{"type": "image"} for _ in self.images]
        content.append({"type": "text", "text": self.prompt})
        return [{"role": "user", "content": content}]


def sc_request(source: Image.Image, edited: Image.Image, instruction: str, *, seed: int = 0) -> Request:
    return Request(SC, (source, edited), render_sc(instruction), seed)


def pq_request(edited: Image.Image, *, seed: int = 0) -> Request:
    return Request(PQ, (edited,), render_pq(), seed)
