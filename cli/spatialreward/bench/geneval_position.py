"""GenEval-style position accuracy with the judge as the detector.

Data: a local JSONL file (``--data FILE``), one image a row, as a t2i manifest::

    {"id": "scene-0000", "prompt": "a red ball to the left of a blue box",
     "image": "images/scene-0000.png", "relations": [["red ball", "to the left of", "blue box"]],
     "holds": [true]}

``prompt``, ``image`` and ``relations`` are required; ``id`` optional
(default ``line-N``); ``holds`` optional: the ground truth of each relation,
in order (``true``/``false``; ``null`` = unknown). ``make_scene_set`` writes
such rows (``manifest.jsonl``).

Each image is judged under ``--protocol t2i-spatial`` with its ``relations``;
the record holds, per relation, the model's verdict and the geometry of the
model's own boxes by GenEval's rule (``t2i.relative_position``, in the image's
pixels). Metrics:

- ``position_accuracy`` (primary): the share of judged images whose stated 2D
  relations (left of, right of, above, below) **all** hold by geometry. A
  relation whose subject or object has no box does not hold (GenEval counts an
  undetected object as a failure). An image stating no 2D relation is not in
  the denominator (``position_accuracy_undefined`` counts it).
- ``true_position_accuracy``: the same from the ground truth ``holds`` (images
  whose 2D relations all have one): the set's GenEval score if the judge were
  a perfect detector, to compare with ``position_accuracy``.
- per relation (overall and per canonical relation type): ``geometry_holds``
  (share of 2D relations holding by geometry), ``model_accuracy`` (the model's
  own verdict against ``holds``; no verdict counts wrong, and is counted as
  ``model_unknown``), ``geometry_accuracy`` (the geometry's verdict against
  ``holds``, 2D only; no box = does not hold), ``agreement`` (model and
  geometry agree, over the relations where both gave a verdict), ``no_box``
  (share of 2D relations with a box missing).

An image with an error (or missing) record is not judged: counted apart,
never right; so are its relations.
"""

from __future__ import annotations

from ..config import Aggregation
from ..errors import ScoresFileError
from ..t2i import RELATIONS_2D, canonical_relation
from .common import Prepared, coverage_line, fmt, table
from .metrics import Tally
from .t2i_common import RowProblems, check_relations, check_text, make_t2i_sample, row_id

NAME = "geneval-position"
HUB_ID = None  # a local file only (--data FILE)
CONFIG = None
SPLITS = ()
PRIMARY = "position_accuracy"
LOCAL = True
COLUMNS = ("prompt", "image", "relations")
ROW = "image"


def prepare_rows(rows: list[tuple[int, dict]], base, source: str, limit: int | None) -> Prepared:
    problems, seen_ids, unit_ids = RowProblems(source), {}, {}
    for number, row in rows:
        check_text(problems, number, row, "prompt")
        check_text(problems, number, row, "image")
        check_relations(problems, number, row)
        relations, holds = row.get("relations"), row.get("holds")
        if isinstance(relations, list) and not relations:
            problems.add(number, "'relations' is empty: nothing to check")
        if holds is not None and (not isinstance(holds, list) or not all(h is None or isinstance(h, bool)
                                                                          for h in holds)):
            problems.add(number, "'holds' must be a list of true/false/null")
        elif holds is not None and isinstance(relations, list) and len(holds) != len(relations):
            problems.add(number, f"'holds' has {len(holds)} values for {len(relations)} relations")
        unit_ids[number] = row_id(number, row, problems, seen_ids)
    problems.raise_any()

    samples, items, seen = [], [], set()
    for number, row in rows[:limit]:
        sample = make_t2i_sample(base, row["image"], row["prompt"], row["relations"], f"{source}:{number}", NAME)
        if sample.id not in seen:
            seen.add(sample.id)
            samples.append(sample)
        items.append({"row": number, "id": unit_ids[number], "sample": sample.id, "relations": row["relations"],
                      "holds": row.get("holds")})
    with_truth = sum(item["holds"] is not None for item in items)
    return Prepared(samples, items, {"images_with_holds": with_truth})


def _verdicts(item: dict, record: dict) -> list[dict]:
    """The record's verdicts, one per relation of the row, in order (checked)."""
    verdicts = record.get("relations")
    stated = item["relations"]
    if not isinstance(verdicts, list) or len(verdicts) != len(stated) or any(
            not isinstance(v, dict) or [v.get("subject"), v.get("relation"), v.get("object")] != list(r)
            for v, r in zip(verdicts, stated)):
        raise ScoresFileError(f"record {record.get('id')!r}: its relations are not the data's {stated!r} "
                              "(judged with other relations?): judge again with --overwrite")
    return verdicts


def evaluate(items: list[dict], records: dict[str, dict], *, variant: str = "strict",
             aggregation: Aggregation | None = None) -> dict:
    images, relations, by_type = Tally(), Tally(), {}
    for item in items:
        record = records.get(item["sample"])
        reason = "missing" if record is None else None if record.get("status") == "ok" else "error"
        types = [canonical_relation(r[1]) for r in item["relations"]]
        if reason:
            images.add_not_judged(reason)
            for canonical in types:
                relations.add_not_judged(reason)
                by_type.setdefault(canonical, Tally()).add_not_judged(reason)
            continue
        holds = item["holds"] or [None] * len(types)
        flat = []
        for verdict, canonical, truth in zip(_verdicts(item, record), types, holds):
            two_d = canonical in RELATIONS_2D
            geometry, model = verdict.get("geometry"), verdict.get("model")
            holding = geometry is True  # no box: does not hold (an undetected object fails, as in GenEval)
            values = {
                "geometry_holds": holding if two_d else None,
                "model_accuracy": None if truth is None else model is truth,
                "model_unknown": model is None,
                "geometry_accuracy": holding == truth if two_d and truth is not None else None,
                "agreement": verdict.get("agree"),
                "no_box": geometry is None if two_d else None,
            }
            flat.append((two_d, holding, truth))
            relations.add(values)
            by_type.setdefault(canonical, Tally()).add(values)
        two_d = [(holding, truth) for is_2d, holding, truth in flat if is_2d]
        images.add({
            "position_accuracy": all(h for h, _ in two_d) if two_d else None,
            "true_position_accuracy": (all(t for _, t in two_d)
                                       if two_d and all(t is not None for _, t in two_d) else None),
        })
    return {
        "overall": images.result(PRIMARY),
        "relations": relations.result(),
        "by_relation": {k: v.result() for k, v in sorted(by_type.items())},
    }


def primary(metrics: dict) -> float | None:
    return metrics["overall"][PRIMARY]


def markdown(metrics: dict, baselines: dict) -> str:
    block = metrics["strict"]
    images, relations = block["overall"], block["relations"]

    def over(tally: dict, name: str) -> str:
        defined = tally["judged"] - tally.get(f"{name}_undefined", 0)
        return str(defined)

    rows = [
        ["**position accuracy** (model's boxes, GenEval's rule)", fmt(images["position_accuracy"], percent=True),
         f"{over(images, 'position_accuracy')} images"],
        ["position accuracy by ground truth (`holds`)", fmt(images.get("true_position_accuracy"), percent=True),
         f"{over(images, 'true_position_accuracy')} images"],
        ["model's verdicts vs `holds`", fmt(relations.get("model_accuracy"), percent=True),
         f"{over(relations, 'model_accuracy')} relations"],
        ["geometry's verdicts vs `holds`", fmt(relations.get("geometry_accuracy"), percent=True),
         f"{over(relations, 'geometry_accuracy')} relations"],
        ["model/geometry agreement", fmt(relations.get("agreement"), percent=True),
         f"{over(relations, 'agreement')} relations"],
    ]
    rows += [[b["model"], fmt(b.get("position_accuracy"), percent=True), ""] for b in baselines.get("models", [])]
    type_rows = [[name, f"{t['judged']}/{t['units']}", fmt(t.get("geometry_holds"), percent=True),
                  fmt(t.get("model_accuracy"), percent=True), fmt(t.get("geometry_accuracy"), percent=True),
                  fmt(t.get("agreement"), percent=True), fmt(t.get("no_box"), percent=True)]
                 for name, t in block["by_relation"].items()]
    return "\n".join([
        "## GenEval-style position (text-to-image, t2i-spatial)", "",
        "Position accuracy (%): images whose stated 2D relations all hold by GenEval's rule on the judge's boxes "
        "(a missing box does not hold).", "",
        table(["metric", "value", "over"], rows), "",
        table(["relation", "judged/relations", "holds (geometry)", "model vs holds", "geometry vs holds",
               "agreement", "no box"], type_rows), "",
        f"model gave no verdict: {fmt(relations.get('model_unknown'), percent=True)}% of the judged relations "
        "(counted wrong against `holds`); relations boxes cannot decide (behind, on, ...) are the model's alone.",
        coverage_line(images),
    ]) + "\n"
