"""EditReward-Bench (from EditScore): preference pairs on one dimension.

Hub ``EditScore/EditReward-Bench``, split ``train``. Row: ``key`` [key1, key2]
(key1 is the human-preferred output; ``output_images[i]`` is ``key[i]``'s
image), ``instruction``, ``input_image``, ``output_images`` (2),
``task_type``, ``dimension`` (prompt_following / consistency / overall).

Each distinct (input, output, instruction) is judged once and reused by every
row that shows it. The dimension's score: prompt_following = success/2.5,
consistency = overediting/2.5, overall = the aggregated overall. A row is
right iff score(key1) > score(key2), strictly. Accuracy per task type and
dimension, then per dimension the unweighted mean over task types.
"""

from __future__ import annotations

from ..aggregate import TO_TEN
from .common import (Prepared, content_id, coverage_line, fmt, make_sample, split_rows, store_path, table,
                     unit_values)
from .data import image_list
from .metrics import Tally, pair_correct, unweighted_mean

NAME = "editreward-bench"
HUB_ID = "EditScore/EditReward-Bench"
CONFIG = None
SPLITS = ("train",)
DIMENSIONS = ("prompt_following", "consistency", "overall")
PRIMARY = "overall"  # --search: only this dimension depends on the aggregation

SCORE = {
    "prompt_following": lambda r: r["scores"]["success"] / TO_TEN,
    "consistency": lambda r: r["scores"]["overediting"] / TO_TEN,
    "overall": lambda r: r["overall"],
}


def prepare(splits: dict, store, limit: int | None) -> Prepared:
    samples, items = [], []
    seen: set[str] = set()
    for split, index, origin, row in split_rows(splits, limit):
        instruction = row.get("instruction")
        source = store_path(store, row.get("input_image"))
        outputs = image_list(row.get("output_images"))
        key = row.get("key")
        item = {"row": index, "split": split, "key": key, "task_type": row.get("task_type"),
                "dimension": row.get("dimension")}
        if len(outputs) != 2 or any(o is None for o in outputs):
            item["invalid"] = f"{len(outputs)} output images, not 2"
        elif item["dimension"] not in DIMENSIONS:
            item["invalid"] = f"unknown dimension {item['dimension']!r}"
        if "invalid" in item:
            items.append(item)
            continue
        ids = []
        for k, value in enumerate(outputs):
            edited = store.path(value)
            sample_id = content_id("erb", source, edited, instruction)
            ids.append(sample_id)
            if sample_id not in seen:
                seen.add(sample_id)
                output_key = key[k] if isinstance(key, (list, tuple)) and len(key) > k else None
                meta = {"benchmark": NAME, "split": split, "row": index, "key": output_key,
                        "category": item["task_type"] if isinstance(item["task_type"], str) else None}
                samples.append(make_sample(sample_id, source, edited, instruction, meta, origin))
        item["better"], item["worse"] = ids
        items.append(item)
    return Prepared(samples, items, {"rows": len(items), "distinct_outputs": len(samples)})


def evaluate(items: list[dict], records: dict[str, dict]) -> dict:
    cells: dict[tuple[str, str], Tally] = {}
    per_dimension: dict[str, Tally] = {d: Tally() for d in DIMENSIONS}
    invalid = 0
    for item in items:
        if item.get("invalid"):
            invalid += 1
            continue
        dimension, task = item["dimension"], str(item["task_type"])
        tallies = (cells.setdefault((dimension, task), Tally()), per_dimension[dimension])
        values, reason = unit_values([item["better"], item["worse"]], records, SCORE[dimension])
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                tally.add({"accuracy": pair_correct(*values)})
    out = {"dimensions": {}, "invalid_rows": invalid}
    all_units = Tally()
    for dimension in DIMENSIONS:
        tasks = {task: tally.result("accuracy") for (d, task), tally in sorted(cells.items()) if d == dimension}
        micro = per_dimension[dimension].result("accuracy")
        out["dimensions"][dimension] = {
            "accuracy": unweighted_mean(t["accuracy"] for t in tasks.values()),
            "micro": micro,
            "by_task_type": tasks,
        }
    for tally in per_dimension.values():
        all_units.units += tally.units
        all_units.judged += tally.judged
        for reason, count in tally.not_judged.items():
            all_units.not_judged[reason] += count
    out["overall"] = all_units.result()
    out["overall"]["not_judged_by"]["invalid row"] = invalid
    out["overall"]["not_judged"] += invalid
    out["overall"]["units"] += invalid
    if not invalid:
        del out["overall"]["not_judged_by"]["invalid row"]
    return out


def primary(metrics: dict) -> float | None:
    return metrics["dimensions"][PRIMARY]["accuracy"]


def markdown(metrics: dict, baselines: dict) -> str:
    dims = metrics["dimensions"]
    header = ["model", *DIMENSIONS]
    rows = [["**SpatialReward (this run)**", *(fmt(dims[d]["accuracy"]) for d in DIMENSIONS)]]
    rows += [[b["model"], *(fmt(b.get(d)) for d in DIMENSIONS)] for b in baselines.get("models", [])]
    tasks = sorted({t for d in DIMENSIONS for t in dims[d]["by_task_type"]})
    task_rows = []
    for task in tasks:
        cells = []
        for d in DIMENSIONS:
            block = dims[d]["by_task_type"].get(task)
            cells.append("" if block is None else f"{fmt(block['accuracy'])} ({block['judged']}/{block['units']})")
        task_rows.append([task, *cells])
    return "\n".join([
        "## EditReward-Bench", "",
        "Accuracy per dimension: unweighted mean over task types of the share of pairs where the preferred "
        "output scores strictly higher (ties wrong).", "",
        table(header, rows), "",
        "Per task type (accuracy, judged/rows):", "",
        table(["task type", *DIMENSIONS], task_rows), "",
        coverage_line(metrics["overall"]),
    ]) + "\n"
