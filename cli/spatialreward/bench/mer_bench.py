"""MER-Bench (MultiEditReward-Bench): ranked groups of 2-4 edits of one source.

Hub ``SpatialReward/MER-Bench``, splits ``2pair``, ``3pair``, ``4pair``. Row:
``pair_id``, ``label`` (category), ``instruction``, ``original_image``,
``edited_images`` (best first: the expert ranking is the list order). Each
candidate is judged, as a ranked group; metrics come from the overall reward.
"""

from __future__ import annotations

from ..config import Aggregation
from .common import Prepared, coverage_line, fmt, make_sample, split_rows, store_path, table, unit_values
from .data import image_list
from .metrics import (PUBLISHED_GROUP_METRICS, VARIANTS, Tally, group_metrics, group_metrics_published,
                      published_overall, variant_notes)

NAME = "mer-bench"
HUB_ID = "SpatialReward/MER-Bench"
CONFIG = None
# The columns prepare() reads: checked before any image is written or the model loads.
COLUMNS = ("instruction", "original_image", "edited_images")
SPLITS = ("2pair", "3pair", "4pair")
PRIMARY = "exact_match"  # what --search ranks aggregations by
METRICS = ("exact_match", "top1", "kendall_tau", "spearman_rho", "ndcg_published", "ndcg")


def prepare(splits: dict, store, limit: int | None) -> Prepared:
    samples, items = [], []
    seen: set[str] = set()
    for split, index, origin, row in split_rows(splits, limit):
        pair_id = row.get("pair_id")
        group = f"{split}/{pair_id if pair_id is not None else index}"
        if group in seen:  # a repeated pair_id: keep both rows, apart
            group = f"{group}@{index}"
        seen.add(group)
        label = row.get("label")
        source = store_path(store, row.get("original_image"))
        edited = [store.path(v) if v is not None else None for v in image_list(row.get("edited_images"))]
        meta = {"benchmark": NAME, "split": split, "pair_id": pair_id, "label": label,
                "category": label if isinstance(label, str) else None}
        ids = []
        for k, path in enumerate(edited):
            sample = make_sample(f"{group}#{k}", source, path, row.get("instruction"), meta, origin,
                                 group=group, group_size=len(edited), candidate=k)
            samples.append(sample)
            ids.append(sample.id)
        item = {"group": group, "split": split, "label": label, "pair_id": pair_id, "ids": ids}
        if not ids:
            item["invalid"] = "no edited images"
        items.append(item)
    return Prepared(samples, items)


def evaluate(items: list[dict], records: dict[str, dict], *, variant: str = "strict",
             aggregation: Aggregation | None = None) -> dict:
    """One variant's metrics: ``strict`` from the recorded reward (ties wrong),
    ``published`` from the raw scores as the authors' code computes them
    (``aggregation``, default the published one; ties in index order)."""
    published = variant == "published"
    metrics_of = group_metrics_published if published else group_metrics

    def value(record: dict) -> float:
        if published:
            return published_overall(record.get("scores"), aggregation, record.get("id"))
        return record["reward"]

    overall, by_split, by_label = Tally(), {}, {}
    for item in items:
        tallies = (overall, by_split.setdefault(item["split"], Tally()),
                   by_label.setdefault(str(item["label"]), Tally()))
        if item.get("invalid"):
            for tally in tallies:
                tally.add_not_judged("invalid row")
            continue
        rewards, reason = unit_values(item["ids"], records, value)
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                tally.add(metrics_of(rewards))
    return {
        "overall": overall.result(PRIMARY),
        "by_split": {k: v.result(PRIMARY) for k, v in sorted(by_split.items())},
        "by_label": {k: v.result(PRIMARY) for k, v in sorted(by_label.items())},
    }


def primary(metrics: dict) -> float | None:
    return metrics["overall"][PRIMARY]


def markdown(metrics: dict, baselines: dict) -> str:
    """``metrics``: the run's, with a block per variant under its name."""
    variants = [v for v in VARIANTS if v in metrics]
    header = ["", "metrics", "groups", "judged", "exact match", "top-1", "Kendall tau", "Spearman rho",
              "NDCG (published)", "NDCG"]

    def rows(name: str, blocks: list[tuple[str, dict]]) -> list[list[str]]:
        return [[name if k == 0 else "", variant, str(block["units"]), str(block["judged"])]
                + [fmt(block.get(m)) if variant == "strict" or m in PUBLISHED_GROUP_METRICS else "-" for m in METRICS]
                for k, (variant, block) in enumerate(blocks)]

    first = metrics[variants[0]]
    table_rows = rows("**all**", [(v, metrics[v]["overall"]) for v in variants])
    for scope, label in (("by_split", "split"), ("by_label", "label")):
        for key in first[scope]:
            table_rows += rows(f"{label} {key}", [(v, metrics[v][scope][key]) for v in variants])
    notes = [
        coverage_line(first["overall"]),
        "exact match: the full ranking by reward equals the experts'; top-1: the experts' best first; "
        "NDCG (published): the formula of the published evaluation; NDCG: textbook, linear gains, ties share "
        "their positions' discounts.",
        *variant_notes(variants, {"published": "tied candidates ranked in index order (the experts' order), so an "
                                               "all-tie group counts as right"}),
    ]
    for variant in variants:
        block = metrics[variant]["overall"]
        if block.get("exact_match_all") is not None and block["not_judged"]:
            notes.append(f"exact match counting the not-judged groups as wrong ({variant}): "
                         f"{fmt(block['exact_match_all'])}")
    return "\n".join(["## MER-Bench", "", table(header, table_rows), "", *notes]) + "\n"
