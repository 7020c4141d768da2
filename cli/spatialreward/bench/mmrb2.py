"""Multimodal RewardBench 2, image editing: A/B pairs with a human choice.

Hub ``rl-research/multimodal-rewardbench-2``, config ``edit``, split ``test``.
Row: ``pair_id``, ``prompt_text``, ``prompt_images`` (one or more source
images), ``response_a_images``, ``response_b_images``, ``chosen`` ("A"/"B"),
``prompt_source``. Right iff the chosen response's reward is strictly higher.

SpatialReward judges one source image per edit. Rows with several source
images are judged with the *first* one, as the published protocol does, and
counted (``multi_source``); their accuracy is also reported apart, and the
accuracy over single-source rows beside it. A response with several images
is judged by its first (counted as ``multi_image_responses``).
"""

from __future__ import annotations

from .common import (Prepared, content_id, coverage_line, fmt, make_sample, split_rows, store_path, table,
                     unit_values)
from .data import image_list
from .metrics import Tally, pair_correct

NAME = "mmrb2-edit"
HUB_ID = "rl-research/multimodal-rewardbench-2"
CONFIG = "edit"
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
        source = store_path(store, sources[0])
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


def evaluate(items: list[dict], records: dict[str, dict]) -> dict:
    overall, by_source = Tally(), {}
    single, multi = Tally(), Tally()
    multi_source = multi_image = 0
    for item in items:
        multi_source += item.get("sources", 1) > 1
        tallies = [overall, by_source.setdefault(str(item["prompt_source"]), Tally()),
                   multi if item.get("sources", 1) > 1 else single]
        if item.get("invalid"):
            for tally in tallies:
                tally.add_not_judged("invalid row")
            continue
        values, reason = unit_values([item["better"], item["worse"]], records, lambda r: r["reward"])
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                tally.add({"accuracy": pair_correct(*values)})
    return {
        "overall": overall.result(PRIMARY),
        "by_prompt_source": {k: v.result(PRIMARY) for k, v in sorted(by_source.items())},
        "single_source": single.result(PRIMARY),
        "multi_source": multi.result(PRIMARY),
        "multi_source_rows": multi_source,
    }


def primary(metrics: dict) -> float | None:
    return metrics["overall"][PRIMARY]


def markdown(metrics: dict, baselines: dict) -> str:
    percent = baselines.get("scale") == "percent"
    rows = [["**SpatialReward (this run)**", fmt(metrics["overall"]["accuracy"], percent=True)]]
    rows += [[b["model"], f"{b['accuracy']:.1f}" if percent else fmt(b["accuracy"], percent=True)]
             for b in baselines.get("models", [])]
    source_rows = [[k, fmt(v["accuracy"], percent=True), f"{v['judged']}/{v['units']}"]
                   for k, v in metrics["by_prompt_source"].items()]
    single, multi = metrics["single_source"], metrics["multi_source"]
    return "\n".join([
        "## MMRB2 image editing", "",
        "Accuracy (%): the chosen response's reward strictly higher (ties wrong).", "",
        table(["model", "accuracy"], rows), "",
        table(["prompt source", "accuracy", "judged/rows"], source_rows), "",
        f"rows with more than one source image: {metrics['multi_source_rows']} (judged with the first; accuracy "
        f"{fmt(multi['accuracy'], percent=True)}); single-source rows: accuracy {fmt(single['accuracy'], percent=True)}",
        coverage_line(metrics["overall"]),
    ]) + "\n"
