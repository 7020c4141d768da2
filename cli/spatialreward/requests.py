"""Turn one edit into the model's two chat requests, in the published order.

SC: one user turn with the source image(s) in their order, the edited image,
then the protocol's SC prompt with the instruction (the multi-image prompt for
several sources where the protocol has one). PQ: one user turn with the edited
image, then the PQ prompt. Both are rendered by the model's own chat template
(in the backend).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .prompts import render_pq, render_sc

SC, PQ, T2I = "sc", "pq", "t2i"


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


def sc_request(source, edited: Image.Image, instruction: str, *, seed: int = 0, protocol: str | None = None) -> Request:
    """``source``: one image, or a tuple of several (kept in their order)."""
    if isinstance(source, tuple):
        return sc_multi_request(source, edited, instruction, seed=seed, protocol=protocol)
    return Request(SC, (source, edited), render_sc(instruction, protocol), seed)


def sc_multi_request(sources: tuple, edited: Image.Image, instruction: str, *, seed: int = 0,
                     protocol: str | None = None) -> Request:
    if len(sources) == 1:
        return sc_request(sources[0], edited, instruction, seed=seed, protocol=protocol)
    return Request(SC, (*sources, edited), render_sc(instruction, protocol, len(sources)), seed)


def pq_request(edited: Image.Image, *, seed: int = 0, protocol: str | None = None) -> Request:
    return Request(PQ, (edited,), render_pq(protocol), seed)


def t2i_request(image: Image.Image, prompt: str, *, seed: int = 0) -> Request:
    """t2i-spatial: one user turn with the image, then our prompt with the text-to-image prompt."""
    from .t2i import render_t2i

    return Request(T2I, (image,), render_t2i(prompt), seed)
