"""The published protocols, as named, versioned data: what the model is asked
and how its images are handled.

A protocol is the SC and PQ prompt templates (and the SC template for several
source images), the message layout, the decoding defaults it was published
with, and its image handling. Two are shipped:

``eval`` (the default): the authors' evaluation scripts, with which the
benchmark tables were computed. SC: the source image(s), the edited image, the
SC prompt; with more than one source image the multi-image SC prompt of the
MMRB2 evaluation (``{num_input_images}`` = the number of sources), as that
evaluation judges multi-reference edits. Images resized by the Qwen3-VL
processor into 3136..589824 pixels. Greedy, 4096 new tokens.

``reward-server``: the authors' released RL reward server, against which the
paper's RL runs were trained. Its SC prompt differs from ``eval``'s in three
places (a trailing space after ``from scale 0 to 25:``, no blank line before
``SPECIAL TOKENS for Reasoning:``, and ``Editing instruction: `` + newline +
the instruction, with no final newline); every source image, then the edited
image, then that one prompt (no multi-image prompt). Its images go through
``qwen_vl_utils.process_vision_info`` with that library's defaults (sides
multiples of 28, 3136..12845056 pixels, Pillow's bicubic resize), then the
model's own processor with its defaults (Qwen3-VL: 65536..16777216 pixels,
multiples of 32). Greedy, 512 new tokens, top_p 0.9, top_k 20, seed 42.

``t2i-spatial`` (ours, version 1): text-to-image spatial judging
(``spatialreward.t2i``). One request per image: the image, then our prompt
with the text-to-image prompt; the answer names each object with a box on the
0..1000 grid, each stated relation with a verdict, and two scores. Any
Qwen-VL-family instruct model judges it (default ``Qwen/Qwen3-VL-8B-Instruct``);
SpatialReward-8B was not trained for it. Greedy, 1024 new tokens, the eval
pixel budget.

The judge hash names the protocol, so results of two protocols never resume
into each other (``eval`` keeps the hash it always had).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import ConfigError
from .resources import read_template

INSTRUCTION_SLOT = "{instruction}"
SOURCES_SLOT = "{num_input_images}"
DEFAULT_PROTOCOL = "eval"


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    sc: str  # SC template (one source image)
    pq: str  # PQ template
    sc_multi: str | None = None  # SC template for several sources (None: ``sc`` for any number)
    generation: dict = field(default_factory=dict)  # decoding / pixel defaults it was published with
    pre_resize: dict | None = None  # qwen_vl_utils resize before the processor: factor, min_pixels, max_pixels
    summary: str = ""
    kind: str = "edit"  # "edit" (source(s) + edited + instruction: SC and PQ) or "t2i" (prompt + image)
    model: str | None = None  # the default model when none is given (None: the project's default)


PROTOCOLS = {
    "eval": Protocol(
        "eval", 1, sc="prompts/sc.txt", pq="prompts/pq.txt", sc_multi="prompts/sc_multi_image.txt",
        summary="the evaluation scripts' (benchmark tables): evaluation SC prompt, multi-image SC prompt for "
                "several sources, 3136..589824 pixels, 4096 new tokens"),
    "reward-server": Protocol(
        "reward-server", 1, sc="prompts/sc_reward_server.txt", pq="prompts/pq.txt",
        generation={"max_new_tokens": 512, "top_p": 0.9, "top_k": 20, "seed": 42,
                    "min_pixels": 65536, "max_pixels": 16777216},
        pre_resize={"factor": 28, "min_pixels": 3136, "max_pixels": 12845056},
        summary="the released RL reward server's: its SC prompt, every source then the edited image, "
                "qwen_vl_utils' resize then the processor's defaults, 512 new tokens"),
    "t2i-spatial": Protocol(
        "t2i-spatial", 1, sc="prompts/t2i_spatial.txt", pq="prompts/t2i_spatial.txt", kind="t2i",
        model="Qwen/Qwen3-VL-8B-Instruct", generation={"max_new_tokens": 1024},
        summary="text-to-image spatial judging (ours): objects with boxes, stated relations checked by the model "
                "and by geometry, spatial and presence scores; any Qwen-VL instruct model"),
}
T2I_KIND = "t2i"


def get_protocol(name: str | None) -> Protocol:
    protocol = PROTOCOLS.get(name or DEFAULT_PROTOCOL)
    if protocol is None:
        raise ConfigError(f"unknown protocol {name!r} (available: {', '.join(PROTOCOLS)})")
    return protocol


@lru_cache(maxsize=None)
def template(relative: str, *, multi: bool = False) -> str:
    text = read_template(relative)
    if text.count(INSTRUCTION_SLOT) != 1:
        raise RuntimeError(f"templates/{relative} must hold exactly one {INSTRUCTION_SLOT} slot")
    if multi and text.count(SOURCES_SLOT) != 1:
        raise RuntimeError(f"templates/{relative} must hold exactly one {SOURCES_SLOT} slot")
    return text


def is_t2i(protocol: str | None) -> bool:
    return get_protocol(protocol).kind == T2I_KIND


def render_sc(instruction: str, *, protocol: str | None = None, sources: int = 1) -> str:
    """The SC prompt of ``protocol`` for ``sources`` source images with
    ``instruction`` filled in verbatim (only the template's slots are replaced,
    so braces in the instruction are left as they are)."""
    chosen = get_protocol(protocol)
    if sources < 1:
        raise ValueError("an edit has at least one source image")
    if sources > 1 and chosen.sc_multi is not None:
        head, tail = template(chosen.sc_multi, multi=True).split(INSTRUCTION_SLOT)
        before, after = head.split(SOURCES_SLOT)
        return before + str(sources) + after + instruction + tail
    head, tail = template(chosen.sc).split(INSTRUCTION_SLOT)
    return head + instruction + tail


def render_pq(*, protocol: str | None = None) -> str:
    return read_template(get_protocol(protocol).pq)


def fingerprint(protocol: str | None = None) -> str:
    """sha256 over what the protocol asks: part of the judge hash. ``eval``'s is
    the one it always had (its SC and PQ templates); its multi-image prompt is
    pinned by its golden test."""
    chosen = get_protocol(protocol)
    if chosen.kind == T2I_KIND:
        from .t2i import t2i_fingerprint

        return t2i_fingerprint()
    digest = hashlib.sha256()
    digest.update(template(chosen.sc).encode("utf-8"))
    digest.update(b"\0")
    digest.update(read_template(chosen.pq).encode("utf-8"))
    if chosen.name != DEFAULT_PROTOCOL:
        digest.update(f"\0{chosen.name}\0{chosen.version}\0{sorted((chosen.pre_resize or {}).items())}".encode())
        if chosen.sc_multi:
            digest.update(template(chosen.sc_multi, multi=True).encode("utf-8"))
    return digest.hexdigest()
