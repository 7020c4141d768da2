"""Text-to-image spatial pairs: does the judge prefer the image that gets the
layout right?

Data: a local JSONL file (``--data FILE``), one pair a row::

    {"id": "scene-0000", "prompt": "a red ball to the left of a blue box",
     "chosen": "images/scene-0000.png", "rejected": "images/scene-0000-twin.png",
     "relations": [["red ball", "to the left of", "blue box"]]}

``prompt``, ``chosen`` and ``rejected`` are required (image paths relative to
the file); ``id`` optional (default ``line-N``); ``relations`` optional (the
``[subject, relation, object]`` the judge checks by the geometry of its boxes,
as a t2i manifest's ``relations``; without them it checks the relations it
states itself); ``relation`` optional (a wording such as ``"left of"``: the
pair's relation type for the breakdown, when ``relations`` do not say it).

Both images of a pair are judged alone (``--protocol t2i-spatial``, the judge's
own pipeline). A pair is right iff the chosen image's recorded reward is
strictly higher than the rejected one's: **a tie is wrong** (both sides the
same image is always a tie). A pair with an error record (or a missing one)
is not judged: counted apart, never right (``accuracy_all`` counts it wrong).

Breakdown per relation type (``spatialreward.t2i.canonical_relation``): a pair
counts under each distinct type it states (``relation``, else its
``relations``), so the rows may sum to more than the total; ``(not given)``
when it states none.
"""

from __future__ import annotations

from ..config import Aggregation
from .common import Prepared, coverage_line, fmt, table, unit_values
from .metrics import Tally, pair_correct
from .t2i_common import (RowProblems, check_relations, check_text, make_t2i_sample, relation_types, row_id)

NAME = "spatial-pairs"
HUB_ID = None  # a local file only (--data FILE)
CONFIG = None
SPLITS = ()
PRIMARY = "accuracy"
LOCAL = True  # read with t2i_common.prepare, judged under --protocol t2i-spatial
COLUMNS = ("prompt", "chosen", "rejected")
ROW = "pair"


def prepare_rows(rows: list[tuple[int, dict]], base, source: str, limit: int | None) -> Prepared:
    """Every row checked (types, unique ids); then the first ``limit`` rows'
    samples (each distinct image, prompt and relations once) and pairs."""
    problems, seen_ids, unit_ids = RowProblems(source), {}, {}
    for number, row in rows:
        for column in COLUMNS:
            check_text(problems, number, row, column)
        check_relations(problems, number, row)
        relation = row.get("relation")
        if relation is not None and not (isinstance(relation, str) and relation.strip()) and not (
                isinstance(relation, list) and len(relation) == 3 and all(isinstance(p, str) for p in relation)):
            problems.add(number, "'relation' must be a relation's wording or [subject, relation, object]")
        unit_ids[number] = row_id(number, row, problems, seen_ids)
    problems.raise_any()

    samples, items, seen = [], [], set()
    for number, row in rows[:limit]:
        origin = f"{source}:{number}"
        relations = row.get("relations")
        ids = {}
        for side in ("chosen", "rejected"):
            sample = make_t2i_sample(base, row[side], row["prompt"], relations, origin, NAME)
            ids[side] = sample.id
            if sample.id not in seen:
                seen.add(sample.id)
                samples.append(sample)
        items.append({"row": number, "id": unit_ids[number],
                      "types": relation_types(relations, row.get("relation")),
                      "better": ids["chosen"], "worse": ids["rejected"]})
    same = sum(item["better"] == item["worse"] for item in items)
    return Prepared(samples, items, {"identical_pairs": same})


def evaluate(items: list[dict], records: dict[str, dict], *, variant: str = "strict",
             aggregation: Aggregation | None = None) -> dict:
    """Pairwise accuracy on the recorded rewards (strict: a tie is wrong),
    overall and per relation type; ``tie_rate`` and ``margin`` (chosen minus
    rejected reward, mean) beside it."""
    overall, by_type = Tally(), {}
    for item in items:
        tallies = [overall] + [by_type.setdefault(t, Tally()) for t in item["types"]]
        values, reason = unit_values([item["better"], item["worse"]], records, lambda r: r["reward"])
        for tally in tallies:
            if reason:
                tally.add_not_judged(reason)
            else:
                chosen, rejected = values
                tally.add({"accuracy": pair_correct(chosen, rejected), "tie_rate": chosen == rejected,
                           "margin": chosen - rejected})
    return {
        "overall": overall.result(PRIMARY),
        "by_relation": {k: v.result(PRIMARY) for k, v in sorted(by_type.items())},
        "identical_pairs": sum(item["better"] == item["worse"] for item in items),
    }


def primary(metrics: dict) -> float | None:
    return metrics["overall"][PRIMARY]


def markdown(metrics: dict, baselines: dict) -> str:
    block = metrics["strict"]
    overall = block["overall"]
    rows = [["**this run (t2i-spatial)**", fmt(overall["accuracy"], percent=True),
             fmt(overall.get("tie_rate"), percent=True), f"{overall['judged']}/{overall['units']}"]]
    rows += [[b["model"], fmt(b["accuracy"], percent=True), "", ""] for b in baselines.get("models", [])]
    type_rows = [[name, fmt(t["accuracy"], percent=True), fmt(t.get("tie_rate"), percent=True),
                  f"{t['judged']}/{t['units']}"] for name, t in block["by_relation"].items()]
    lines = [
        "## Spatial pairs (text-to-image, t2i-spatial)", "",
        "Accuracy (%): the chosen image's reward strictly higher than the rejected one's (a tie is wrong).", "",
        table(["model", "accuracy", "ties", "judged/pairs"], rows), "",
        table(["relation", "accuracy", "ties", "judged/pairs"], type_rows), "",
        "a pair counts under each relation type it states: the rows may sum to more than the total.",
    ]
    if block.get("identical_pairs"):
        lines.append(f"pairs whose two sides are the same image: {block['identical_pairs']} (a tie: wrong)")
    lines.append("strict: from the recorded reward (rounded to 6 decimals); a tie is always wrong.")
    lines.append(coverage_line(overall))
    return "\n".join(lines) + "\n"
