"""The pixel budget, applied on our side: the exact size and resampling the
Qwen3-VL image processor would give an image.

Engines (a vLLM or SGLang server, vLLM in process) run the model's image
processor with *their* settings. Sending each image already resized to the
size the processor computes for the judge's budget, with the processor's own
resampling, makes the engine's processor a no-op on size: an image whose sides
are multiples of 32 and whose area lies inside the budget is left as it is, so
the engine sees exactly the pixels the transformers path would give the model.

The rule (Qwen2-VL/Qwen3-VL ``smart_resize``): sides rounded to multiples of
``factor`` (patch 16 x spatial merge 2 = 32 for Qwen3-VL), aspect ratio kept as
closely as possible, area within ``[min_pixels, max_pixels]``. The resampling
is what the transformers Qwen2-VL/Qwen3-VL image processor (the torchvision
backend, the default) does: ``torchvision.transforms.v2.functional.resize`` of
the uint8 CHW tensor, bicubic, antialiased. The engine must not change a size
inside the budget (vLLM's processor would enlarge images below its own
``min_pixels``, for instance): the openai backend checks that at start.
"""

from __future__ import annotations

import math

from PIL import Image

FACTOR = 32  # Qwen3-VL: patch 16 x spatial merge 2
MAX_RATIO = 200  # the processor refuses more elongated images


def smart_resize(height: int, width: int, *, factor: int = FACTOR, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) the Qwen3-VL processor resizes an image to for this budget."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio must be below {MAX_RATIO}, not {max(height, width) / min(height, width):.1f}")
    # Python's round() (half to even), as the processor uses.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def target_size(image: Image.Image, generation) -> tuple[int, int]:
    """(width, height) of ``image`` under the budget of ``generation``."""
    h, w = smart_resize(image.height, image.width, min_pixels=generation.min_pixels, max_pixels=generation.max_pixels)
    return w, h


def resize_for_model(image: Image.Image, generation) -> Image.Image:
    """``image`` (RGB) resized exactly as the Qwen3-VL processor would resize it
    under the budget of ``generation`` (``min_pixels``, ``max_pixels``); the
    image itself when it already has that size."""
    width, height = target_size(image, generation)
    if (width, height) == image.size:
        return image
    import numpy as np
    import torch

    from .torch_pair import raise_if_mismatch

    try:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF
    except Exception as exc:  # noqa: BLE001 - a torch/torchvision mismatch: one line (TorchPairError)
        raise_if_mismatch(exc)
        raise

    # As the processor does: HWC uint8 array -> contiguous CHW uint8 tensor ->
    # bicubic antialiased resize (uint8 in, uint8 out on the CPU).
    tensor = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    resized = tvF.resize(tensor, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return Image.fromarray(resized.permute(1, 2, 0).contiguous().numpy(), "RGB")


def image_tokens(width: int, height: int, *, factor: int = FACTOR) -> int:
    """Language-model tokens of an image already at a budget size (one per
    merged ``factor`` x ``factor`` patch)."""
    return (width // factor) * (height // factor)


PROMPT_TOKENS = 700  # text tokens of an SC request besides its images (chat frame, prompt, instruction)


def context_needed(generation) -> tuple[int, int]:
    """(tokens an SC request may need in all, tokens of one image at most):
    two images at ``max_pixels``, about PROMPT_TOKENS of text, ``max_new_tokens``."""
    per_image = generation.max_pixels // (FACTOR * FACTOR)
    return 2 * per_image + PROMPT_TOKENS + generation.max_new_tokens, per_image


def qwen_vl_utils_size(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) ``qwen_vl_utils.fetch_image`` resizes an image to: its own
    ``smart_resize``, which differs from the processor's in one detail (each
    rounded side is at least ``factor`` before the budget is applied)."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio must be below {MAX_RATIO}, not {max(height, width) / min(height, width):.1f}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_vl_utils_resize(image: Image.Image, *, factor: int, min_pixels: int, max_pixels: int) -> Image.Image:
    """``image`` as ``qwen_vl_utils.process_vision_info`` hands it on (the released
    reward server's step before the model's processor): Pillow's bicubic resize
    (``Image.resize``'s default) to ``qwen_vl_utils_size``."""
    h, w = qwen_vl_utils_size(image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if (w, h) == image.size:
        return image
    return image.resize((w, h), Image.Resampling.BICUBIC)
