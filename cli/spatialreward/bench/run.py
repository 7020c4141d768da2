"""The bench output folder, metrics from a results file, and the offline search.

``DIR/`` holds:

- ``images/``: the dataset's images, each distinct one written once, byte for byte;
- ``items.jsonl``: the benchmark's units (groups / pairs) with the sample ids they need;
- ``bench.json``: which benchmark, data, splits and limit made them;
- ``scores.jsonl``: ordinary judge records (``runner.run``: resumable);
- ``metrics.json`` and ``metrics.md`` (the ``published`` and the ``strict``
  figures, see ``metrics``); ``search.json`` after ``--search`` (strict).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..config import STRATEGIES, Aggregation, config_hash
from ..errors import ScoresFileError, SpatialRewardError
from ..output import write_atomic
from ..rescore import rescore_record
from ..results import read_records
from . import BENCHMARKS
from .common import Prepared
from .data import ImageStore, check_columns, load_splits
from .metrics import VARIANTS

ITEMS, INFO, SCORES, METRICS_JSON, METRICS_MD, SEARCH_JSON = (
    "items.jsonl", "bench.json", "scores.jsonl", "metrics.json", "metrics.md", "search.json")
DEFAULT = Aggregation()


def benchmark(name: str):
    return BENCHMARKS[name]


def baselines(name: str) -> dict:
    data = json.loads(resources.files(__package__).joinpath("baselines.json").read_text(encoding="utf-8"))
    return data.get(name, {"models": []})


def prepare(name: str, source: str, folder: Path, *, splits: list[str] | None, limit: int | None) -> Prepared:
    """Read the dataset, write its images, ``items.jsonl`` and ``bench.json``."""
    bench = benchmark(name)
    rows = load_splits(source, hub_id=bench.HUB_ID, config=bench.CONFIG, splits=splits, default_splits=bench.SPLITS)
    check_columns(source, name, rows, bench.COLUMNS)  # before any image is written or the model loads
    folder.mkdir(parents=True, exist_ok=True)
    store = ImageStore(folder / "images")
    prepared = bench.prepare(rows, store, limit)
    _write_jsonl(folder / ITEMS, prepared.items)
    info = {"benchmark": name, "data": source, "splits": list(rows), "limit": limit, "items": len(prepared.items),
            "samples": len(prepared.samples), "images_written": store.written, **prepared.notes}
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return prepared


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    partial = path.with_name(path.name + ".part")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)


def read_items(folder: Path, name: str) -> list[dict]:
    """The units ``prepare`` wrote next to a results file, checked to be ``name``'s."""
    info_path, items_path = folder / INFO, folder / ITEMS
    if not info_path.is_file() or not items_path.is_file():
        raise ScoresFileError(f"{folder}: no {INFO} and {ITEMS} beside the scores (written by `spatialreward bench "
                              f"{name} --data ... -o {folder}`): the benchmark's units are needed to score them")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("benchmark") != name:
        raise ScoresFileError(f"{folder} holds a {info.get('benchmark')!r} run, not {name!r}")
    return [json.loads(line) for line in items_path.read_text(encoding="utf-8").splitlines() if line.strip()]


_KEEP = ("id", "status", "reward", "overall", "sc", "pq", "scores", "judge_hash", "config_hash")


def load_records(scores: Path, aggregation: Aggregation | None = None) -> dict[str, dict]:
    """``{id: record}`` from a results file (only the fields metrics need);
    rescored with ``aggregation`` when given."""
    out = {}
    for record in read_records(scores):
        slim = {k: record.get(k) for k in _KEEP}
        out[record["id"]] = rescore_record(slim, aggregation) if aggregation is not None else slim
    return out


def recorded_aggregation(records: dict[str, dict], aggregation: Aggregation) -> Aggregation:
    """``aggregation``, checked to be the one the records were scored with
    (``config_hash`` is the judge's hash and the aggregation's): the published
    figures recompute the overall from the raw scores with it."""
    for record in records.values():
        judge, recorded = record.get("judge_hash"), record.get("config_hash")
        if record.get("status") == "ok" and judge and recorded and config_hash(judge, aggregation) != recorded:
            raise ScoresFileError(
                f"record {record.get('id')!r} was scored with another aggregation than {describe(aggregation)} "
                f"(its config_hash differs): pass the run's --aggregation/--weights/--alpha (or --config) to "
                f"compute the published figures from its raw scores, or --metrics strict")
    return aggregation


def evaluate(name: str, items: list[dict], records: dict[str, dict], *, aggregation: Aggregation | None,
             scores: Path, variants: tuple[str, ...] = VARIANTS, published_with: Aggregation | None = None) -> dict:
    """The metrics of every variant asked for (``published``, ``strict``),
    each under its name; the strict ones also at the top level, where readers
    of earlier metrics files find them. ``aggregation``: what the records were
    rescored with (None: as recorded); ``published_with``: the aggregation the
    published variant recomputes the overall with (default the published one)."""
    bench = benchmark(name)
    blocks = {}
    for variant in VARIANTS:
        if variant in variants:
            metrics = bench.evaluate(items, records, variant=variant, aggregation=published_with)
            blocks[variant] = {"primary": {"name": bench.PRIMARY, "value": bench.primary(metrics)}, **metrics}
    hashes = sorted({r["config_hash"] for r in records.values() if r.get("config_hash")})
    headline = "strict" if "strict" in blocks else "published"
    out = {
        "benchmark": name,
        "scores": str(scores),
        "aggregation": dataclasses.asdict(aggregation) if aggregation else "as recorded",
        "config_hashes": hashes,
        "metrics": list(blocks),
        "primary": {**blocks[headline]["primary"], "variant": headline},
    }
    if "published" in blocks:
        out["published_aggregation"] = dataclasses.asdict(published_with or DEFAULT)
    if "strict" in blocks:
        out.update({k: v for k, v in blocks["strict"].items() if k != "primary"})
    out.update(blocks)
    return out


def markdown(name: str, metrics: dict) -> str:
    return benchmark(name).markdown(metrics, baselines(name))


def write_metrics(folder: Path, name: str, metrics: dict) -> str:
    text = markdown(name, metrics)
    write_atomic(folder / METRICS_JSON, json.dumps(metrics, indent=2) + "\n")
    write_atomic(folder / METRICS_MD, text)
    return text


# -- offline aggregation search ------------------------------------------------

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
SC_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # w1; w2 = 1 - w1
PQ_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # w3; w4 = 1 - w3


def grid() -> Iterator[Aggregation]:
    """Every weighted_geometric setting of the grid, then each other strategy."""
    for alpha in ALPHAS:
        for w1 in SC_WEIGHTS:
            for w3 in PQ_WEIGHTS:
                yield Aggregation("weighted_geometric", (w1, round(1 - w1, 2), w3, round(1 - w3, 2)), alpha)
    for strategy in STRATEGIES:
        if strategy != "weighted_geometric":
            yield Aggregation(strategy)


def describe(aggregation: Aggregation) -> str:
    if aggregation.strategy != "weighted_geometric":
        return aggregation.strategy
    w1, w2, w3, w4 = aggregation.weights
    return f"alpha {aggregation.alpha:g}, SC {w1:g}/{w2:g}, PQ {w3:g}/{w4:g}"


def search(name: str, items: list[dict], scores: Path, *, top: int = 10) -> dict:
    """The benchmark's primary metric for every aggregation of ``grid()``,
    recomputed from the stored raw scores (no model)."""
    from .metrics import competition_rank

    bench = benchmark(name)
    raw = load_records(scores)
    settings = list(grid())
    values = []
    for aggregation in settings:
        rescored = {k: rescore_record(r, aggregation) for k, r in raw.items()}
        values.append(bench.primary(bench.evaluate(items, rescored)))
    if all(v is None for v in values):
        raise SpatialRewardError(f"{scores}: no unit of {name} was judged: nothing to search")
    keyed = [(-1.0 if v is None else v) for v in values]
    order = sorted(range(len(settings)), key=lambda i: -keyed[i])
    default_index = settings.index(DEFAULT)
    rows = [{"rank": competition_rank(keyed, i), "setting": describe(settings[i]),
             "aggregation": dataclasses.asdict(settings[i]), "value": values[i]} for i in order]
    return {
        "benchmark": name,
        "metric": bench.PRIMARY,
        "settings": len(settings),
        "best": rows[:top],
        "default": {"rank": competition_rank(keyed, default_index), "setting": describe(DEFAULT),
                    "aggregation": dataclasses.asdict(DEFAULT), "value": values[default_index],
                    "tied_with": sum(1 for v in keyed if v == keyed[default_index]) - 1},
        "all": rows,
    }


def search_markdown(result: dict) -> str:
    from .common import fmt, table

    rows = [[str(r["rank"]), r["setting"], fmt(r["value"])] for r in result["best"]]
    default = result["default"]
    best = sum(1 for r in result["all"] if r["rank"] == 1)
    return "\n".join([
        f"## Aggregation search: {result['benchmark']} ({result['metric']}, {result['settings']} settings)", "",
        table(["rank", "aggregation", result["metric"]], rows), "",
        f"best {result['metric']} {fmt(result['best'][0]['value'])}, reached by {best} of {result['settings']} settings",
        f"published default ({default['setting']}): rank {default['rank']} of {result['settings']} "
        f"({result['metric']} {fmt(default['value'])}; tied with {default['tied_with']} other settings)",
    ]) + "\n"
