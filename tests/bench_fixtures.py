"""Small benchmark datasets in the exact hub schemas, built with `datasets`
from real photos (scikit-image) edited by code, saved the two ways a user's
downloaded copy comes: a `save_to_disk` folder and the parquet files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageOps


def _photo(name: str, size=(96, 64)) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)


def edits(name: str) -> list[Image.Image]:
    """A source photo and four code-made edits of it, all distinct."""
    base = _photo(name)
    red = base.copy()
    ImageDraw.Draw(red).rectangle([30, 10, 60, 40], fill=(220, 20, 20))
    gray = ImageOps.grayscale(base).convert("RGB")
    blur = base.filter(ImageFilter.GaussianBlur(3))
    mirror = ImageOps.mirror(base)
    return [base, red, gray, blur, mirror]


PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")


def mer_bench():
    """DatasetDict with splits 2pair, 3pair, 4pair (``edited_images`` best first)."""
    import datasets

    features = datasets.Features({
        "pair_id": datasets.Value("string"), "label": datasets.Value("string"),
        "instruction": datasets.Value("string"), "original_image": datasets.Image(),
        "edited_images": datasets.List(datasets.Image()),
    })
    splits = {}
    for n, split in ((2, "2pair"), (3, "3pair"), (4, "4pair")):
        rows = []
        for k, photo in enumerate(PHOTOS[:3]):
            images = edits(photo)
            rows.append({"pair_id": f"{photo}-{n}", "label": ("add", "remove", "style")[k],
                         "instruction": f"Add a red square to the {photo} photo",
                         "original_image": images[0], "edited_images": images[1:1 + n]})
        splits[split] = datasets.Dataset.from_list(rows, features=features, split=split)
    return datasets.DatasetDict(splits)


def editreward_bench():
    """Split train; each output pair appears under the three dimensions (outputs shared across rows)."""
    import datasets

    features = datasets.Features({
        "key": datasets.List(datasets.Value("string")), "instruction": datasets.Value("string"),
        "input_image": datasets.Image(), "output_images": datasets.List(datasets.Image()),
        "task_type": datasets.Value("string"), "dimension": datasets.Value("string"),
    })
    rows = []
    for k, photo in enumerate(PHOTOS):
        images = edits(photo)
        for a, b in ((1, 2), (3, 4)):
            for dimension in ("prompt_following", "consistency", "overall"):
                rows.append({"key": [f"{photo}/model{a}", f"{photo}/model{b}"], "instruction": f"Edit the {photo}",
                             "input_image": images[0], "output_images": [images[a], images[b]],
                             "task_type": ("subject_add", "color_alter")[k % 2], "dimension": dimension})
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=features, split="train")})


def mmrb2_edit():
    """Config edit, split test; one row with two source images."""
    import datasets

    features = datasets.Features({
        "pair_id": datasets.Value("string"), "prompt_text": datasets.Value("string"),
        "prompt_images": datasets.List(datasets.Image()), "response_a_images": datasets.List(datasets.Image()),
        "response_b_images": datasets.List(datasets.Image()), "chosen": datasets.Value("string"),
        "prompt_source": datasets.Value("string"),
    })
    rows = []
    for k, photo in enumerate(PHOTOS):
        images = edits(photo)
        sources = [images[0], edits(PHOTOS[(k + 1) % 4])[0]] if k == 0 else [images[0]]
        rows.append({"pair_id": f"p{k}", "prompt_text": f"Make the {photo} photo black and white",
                     "prompt_images": sources, "response_a_images": [images[2]], "response_b_images": [images[3]],
                     "chosen": "AB"[k % 2], "prompt_source": ("emu", "magicbrush")[k % 2]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=features, split="test")})


def save_parquet(dataset_dict, root: Path, prefix: str = "data") -> Path:
    """The parquet files as `hf download` lays out a hub dataset repository:
    ``PREFIX/SPLIT-00000-of-00001.parquet``."""
    for split, dataset in dataset_dict.items():
        path = root / prefix / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(path))
    return root
