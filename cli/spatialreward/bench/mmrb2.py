"""Multimodal RewardBench 2, image editing: A/B pairs with a human choice.

Hub ``rl-research/multimodal-rewardbench-2``, config ``edit``, split ``test``.
Row: ``pair_id``, ``prompt_text``, ``prompt_images`` (one or more source
images), ``response_a_images``, ``response_b_images``, ``chosen`` ("A"/"B"),
``prompt_source``. Right iff the chosen response's reward is strictly higher.

Rows with several source images are judged with all of them, in their order,
as the published MMRB2 evaluation does (under the ``eval`` protocol: its
multi-image SC prompt; at most ``MAX_SOURCES``, more is an input error of the
row's samples), and counted (``multi_source``). A response with several images
is judged by its first (counted as ``multi_image_responses``). The published
evaluation samples at temperature 0.7; the bench judges greedily unless
``--temperature`` says otherwise.
"""

from __future__ import annotations

from ..config import Aggregation
from .common import (Prepared, content_id, coverage_line, fmt, make_sample, split_rows, store_path, table,
                     unit_values)
from .data import image_list
from .metrics import VARIANTS, Tally, pair_correct, published_overall, variant_notes

NAME = "mmrb2-edit"
HUB_ID = "rl-research/multimodal-rewardbench-2"
CONFIG = "edit"
# The columns prepare() reads: checked before any image is written or the model loads.
COLUMNS = ("prompt_text", "prompt_images", "response_a_images", "response_b_images", "chosen")
SPLITS = ("test",)
PRIMARY = "accuracy"


def prepare(splits: dict, store, limit: int | None) -> Prepared:
    samples, items = [], []
    seen: set[str] = set()
    multi_source = multi_image = 0
    for split, index, origin, row in split_rows(splits, limit):
        instruction = row.get("prompt_text")
        sources = image_list(row.get("prompt_images"))
        item = {"row": index, "split": split, "pair_id": row.get("pair_id"),
                "prompt_source": row.get("prompt_source"), "sources": len(sources), "chosen": row.get("chosen")}
        multi_source += len(sources) > 1
        responses = {side: image_list(row.get(f"response_{side.lower()}_images")) for side in "AB"}
        if item["chosen"] not in ("A", "B"):
            item["invalid"] = f"chosen is {item['chosen']!r}, not 'A' or 'B'"
        elif not sources:
            item["invalid"] = "no source image"
        elif not all(responses.values()):
            item["invalid"] = "a response without an image"
        if "invalid" in item:
            items.append(item)
            continue
        paths = [store_path(store, image) for image in sources]
        source = paths[0] if len(paths) == 1 else paths  # several: all of them, in order
        ids = {}
        for side, images in responses.items():
            multi_image += len(images) > 1
            edited = store_path(store, images[0])
            sample_id = content_id("mmrb2", source, edited, instruction)
            ids[side] = sample_id
            if sample_id not in seen:
                seen.add(sample_id)
                meta = {"benchmark": NAME, "split": split, "pair_id": item["pair_id"], "response": side,
                        "category": item["prompt_source"] if isinstance(item["prompt_source"], str) else None}
                samples.append(make_sample(sample_id, source, edited, instruction, meta, origin))
        rejected = "B" if item["chosen"] == "A" else "A"
        item["better"], item["worse"] = ids[item["chosen"]], ids[rejected]
        items.append(item)
    return Prepared(samples, items, {"multi_source": multi_source, "multi_image_responses": multi_image})


def evaluate(items: list[dict], records: dict[str, dict], *, variant: str = "strict",
             aggregation: Aggregation | None = None) -> dict:
    """One variant's metrics: ``strict`` compares the recorded rewards,
    ``published`` the overall recomputed from the raw scores as the authors'
    code does (``aggregation``, default the published one)."""
    def value(record: dict) -> float:
        if variant == "published":
            return published_overall(record.get("scores"), aggregation, record.get("id"))
        return record["reward"]

    overall, by_source = Tally(), {}
    multi_source = 0
    for item in items:
        multi_source += item.get("sources", 1) > 1
        tallies = [overall, by_source.setdefault(str(item["prompt_source"]), Tally())]
        if item.get("invalid"):
            for tally in tallies:
                tally.add_not_judged("invalid row")
            continue
        values, reason = unit_values([item["better"], item["worse"]], records, value)
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                tally.add({"accuracy": pair_correct(*values)})
    return {
        "overall": overall.result(PRIMARY),
        "by_prompt_source": {k: v.result(PRIMARY) for k, v in sorted(by_source.items())},
        "multi_source_rows": multi_source,
    }


def primary(metrics: dict) -> float | None:
    return metrics["overall"][PRIMARY]


def markdown(metrics: dict, baselines: dict) -> str:
    """``metrics``: the run's, with a block per variant under its name."""
    variants = [v for v in VARIANTS if v in metrics]
    percent = baselines.get("scale") == "percent"
    rows = [[f"**SpatialReward (this run, {v})**", fmt(metrics[v]["overall"]["accuracy"], percent=True)]
            for v in variants]
    rows += [[b["model"], f"{b['accuracy']:.1f}" if percent else fmt(b["accuracy"], percent=True)]
             for b in baselines.get("models", [])]
    first = metrics[variants[0]]
    source_rows = [[k if n == 0 else "", v, fmt(metrics[v]["by_prompt_source"][k]["accuracy"], percent=True),
                    f"{metrics[v]['by_prompt_source'][k]['judged']}/{metrics[v]['by_prompt_source'][k]['units']}"]
                   for k in first["by_prompt_source"] for n, v in enumerate(variants)]
    return "\n".join([
        "## MMRB2 image editing", "",
        "Accuracy (%): the chosen response's reward strictly higher.", "",
        table(["model", "accuracy"], rows), "",
        table(["prompt source", "metrics", "accuracy", "judged/rows"], source_rows), "",
        f"rows with more than one source image: {first['multi_source_rows']} (judged with all of them, in order)",
        *variant_notes(variants),
        coverage_line(first["overall"]),
    ]) + "\n"
