"""EditReward-Bench (from EditScore): preference pairs on one dimension.

Hub ``EditScore/EditReward-Bench``, split ``train``. Row: ``key`` [key1, key2]
(key1 is the human-preferred output; ``output_images[i]`` is ``key[i]``'s
image), ``instruction``, ``input_image``, ``output_images`` (2),
``task_type``, ``dimension`` (prompt_following / consistency / overall).

Each distinct (input, output, instruction) is judged once and reused by every
row that shows it. The dimension's score: prompt_following = success/2.5,
consistency = overediting/2.5, overall = the aggregated overall. A row is
right iff score(key1) > score(key2), strictly. Accuracy per task type and
dimension, then per dimension the unweighted mean over task types (see
``evaluate`` for the two variants' rule on a cell without rows).
"""

from __future__ import annotations

from ..aggregate import TO_TEN
from ..config import Aggregation
from .common import (Prepared, content_id, coverage_line, fmt, make_sample, split_rows, store_path, table,
                     unit_values)
from .data import image_list
from .metrics import VARIANTS, Tally, pair_correct, published_overall, unweighted_mean, variant_notes

NAME = "editreward-bench"
HUB_ID = "EditScore/EditReward-Bench"
CONFIG = None
# The columns prepare() reads: checked before any image is written or the model loads.
COLUMNS = ("instruction", "input_image", "output_images", "task_type", "dimension")
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


def evaluate(items: list[dict], records: dict[str, dict], *, variant: str = "strict",
             aggregation: Aggregation | None = None) -> dict:
    """One variant's metrics. ``strict``: the recorded overall; a (task type,
    dimension) cell without rows is left out of its dimension's mean.
    ``published``: the overall recomputed from the raw scores as the authors'
    code does (``aggregation``, default the published one); a cell without
    rows, for a task type that has rows under another dimension, is averaged
    in as 0.0, as their code does (listed under ``empty_cells``)."""
    score = dict(SCORE)
    if variant == "published":
        score["overall"] = lambda r: published_overall(r.get("scores"), aggregation, r.get("id"))
    cells: dict[tuple[str, str], Tally] = {}
    per_dimension: dict[str, Tally] = {d: Tally() for d in DIMENSIONS}
    invalid = 0
    for item in items:
        if item.get("invalid"):
            invalid += 1
            continue
        dimension, task = item["dimension"], str(item["task_type"])
        tallies = (cells.setdefault((dimension, task), Tally()), per_dimension[dimension])
        values, reason = unit_values([item["better"], item["worse"]], records, score[dimension])
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                tally.add({"accuracy": pair_correct(*values)})
    out = {"dimensions": {}, "invalid_rows": invalid}
    all_tasks = sorted({task for _, task in cells})
    all_units = Tally()
    for dimension in DIMENSIONS:
        tasks = {task: tally.result("accuracy") for (d, task), tally in sorted(cells.items()) if d == dimension}
        micro = per_dimension[dimension].result("accuracy")
        accuracies = [t["accuracy"] for t in tasks.values()]
        empty = [task for task in all_tasks if task not in tasks] if variant == "published" else []
        block = {"accuracy": unweighted_mean(accuracies + [0.0] * len(empty)), "micro": micro, "by_task_type": tasks}
        if variant == "published":
            block["empty_cells"] = empty
        out["dimensions"][dimension] = block
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
    """``metrics``: the run's, with a block per variant under its name."""
    variants = [v for v in VARIANTS if v in metrics]
    header = ["model", *DIMENSIONS]
    rows = [[f"**SpatialReward (this run, {v})**", *(fmt(metrics[v]["dimensions"][d]["accuracy"]) for d in DIMENSIONS)]
            for v in variants]
    rows += [[b["model"], *(fmt(b.get(d)) for d in DIMENSIONS)] for b in baselines.get("models", [])]
    tasks = sorted({t for v in variants for d in DIMENSIONS for t in metrics[v]["dimensions"][d]["by_task_type"]})
    task_rows = []
    for task in tasks:
        for k, variant in enumerate(variants):
            dims = metrics[variant]["dimensions"]
            cells = []
            for d in DIMENSIONS:
                block = dims[d]["by_task_type"].get(task)
                if block is not None:
                    cells.append(f"{fmt(block['accuracy'])} ({block['judged']}/{block['units']})")
                else:
                    cells.append("0.000 (no rows)" if task in dims[d].get("empty_cells", ()) else "")
            task_rows.append([task if k == 0 else "", variant, *cells])
    first = metrics[variants[0]]
    return "\n".join([
        "## EditReward-Bench", "",
        "Accuracy per dimension: unweighted mean over task types of the share of pairs where the preferred "
        "output scores strictly higher.", "",
        table(header, rows), "",
        "Per task type (accuracy, judged/rows):", "",
        table(["task type", "metrics", *DIMENSIONS], task_rows), "",
        *variant_notes(variants, {
            "published": "a (task type, dimension) cell without rows is averaged in as 0.0",
            "strict": "a (task type, dimension) cell without rows is left out of the mean"}),
        coverage_line(first["overall"]),
    ]) + "\n"
