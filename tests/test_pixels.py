"""The pixel budget applied on our side (spatialreward.pixels): the exact size
the Qwen3-VL processor computes, and its resampling, so that an engine's
processor, given the resized image, changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatialreward.config import Generation
from spatialreward.pixels import image_tokens, resize_for_model, smart_resize


# Hand-computed (height, width) -> (height, width) with factor 32, budget 3136..589824:
# 600x400: round(12.5)=12 -> 384, round(18.75)=19 -> 608, inside the budget.
# 1200x800: 1216x800 is over; beta = sqrt(960000/589824) = 1.2758 -> floor(29.39)=29 -> 928, floor(19.60)=19 -> 608.
# 120x80: round(2.5)=2 -> 64, round(3.75)=4 -> 128; 8192 >= 3136.
# 64x64: already a multiple of 32, 4096 >= 3136.
# 40x30 (w x h): 32x32 = 1024 < 3136; beta = sqrt(3136/1200) = 1.6166 -> ceil(48.5/32)=2 -> 64, ceil(64.7/32)=3 -> 96.
@pytest.mark.parametrize("width, height, expected", [
    (600, 400, (384, 608)),
    (1200, 800, (608, 928)),
    (120, 80, (64, 128)),
    (64, 64, (64, 64)),
    (40, 30, (64, 96)),
    (768, 768, (768, 768)),
])
def test_smart_resize_hand_computed(width, height, expected):
    assert smart_resize(height, width, min_pixels=3136, max_pixels=589824) == expected


def test_smart_resize_equals_the_processors():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    for h, w in [(400, 600), (512, 300), (333, 777), (1080, 1920), (17, 900), (2000, 31), (5, 5), (3000, 4000)]:
        for lo, hi in [(3136, 589824), (65536, 16777216), (1024, 128 * 128)]:
            assert smart_resize(h, w, min_pixels=lo, max_pixels=hi) == reference(h, w, factor=32, min_pixels=lo, max_pixels=hi)


def test_results_are_fixed_points_and_token_counts():
    for h, w in [(400, 600), (77, 1000), (5000, 3000)]:
        th, tw = smart_resize(h, w, min_pixels=3136, max_pixels=589824)
        assert th % 32 == 0 and tw % 32 == 0 and 3136 <= th * tw <= 589824
        assert smart_resize(th, tw, min_pixels=3136, max_pixels=589824) == (th, tw)
    assert image_tokens(768, 768) == 576  # the published cost of a 768x768 image


def test_resize_for_model(photos):
    coffee = Image.open(photos["coffee"]).convert("RGB")  # 600x400
    out = resize_for_model(coffee, Generation())
    assert out.size == (608, 384) and out.mode == "RGB"
    assert resize_for_model(out, Generation()) is out  # already at the budget's size: untouched
    small = resize_for_model(coffee, Generation(max_pixels=128 * 128))
    assert small.size == (128, 96)


def _pixel_values(processor, image, generation):
    size = {"shortest_edge": generation.min_pixels, "longest_edge": generation.max_pixels}
    out = processor.image_processor(images=[image], return_tensors="pt", size=size)
    return out["pixel_values"], out["image_grid_thw"].tolist()


@pytest.mark.parametrize("shape", ["landscape", "portrait", "odd", "large", "small"])
def test_processor_sees_the_same_pixels(tiny_model, photos, shape):
    """The transformers Qwen3-VL processor gives the same pixel_values (exactly)
    for the client-resized image as for the original: same size, same
    resampling, and no second resize."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_model))
    coffee = Image.open(photos["coffee"]).convert("RGB")
    astronaut = Image.open(photos["astronaut"]).convert("RGB")
    image = {
        "landscape": coffee,  # 600x400
        "portrait": astronaut,  # 300x512
        "odd": coffee.crop((3, 5, 590, 372)),  # 587x367: no side a multiple of 32
        "large": coffee.resize((1500, 1000), Image.Resampling.LANCZOS),  # over the budget
        "small": astronaut.resize((45, 77), Image.Resampling.LANCZOS),  # under the minimum
    }[shape]
    generation = Generation()
    original, grid = _pixel_values(processor, image, generation)
    resized = resize_for_model(image, generation)
    again, grid_again = _pixel_values(processor, resized, generation)
    assert grid == grid_again
    assert grid[0][1] * 16 == resized.height and grid[0][2] * 16 == resized.width
    assert np.array_equal(original.numpy(), again.numpy())
