"""``spatialreward bench``: the published benchmark evaluations in one command."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from ..output import exclusive, write_atomic
from .judge import EXIT_INTERRUPTED
from .options import (
    config_overrides,
    judge_for_output,
    judge_options,
    pass_params,
    quiet_option,
)
from .progress import progress

T2I_NAMES = ("spatial-pairs", "geneval-position")  # text-to-image, on a local JSONL file, --protocol t2i-spatial
NAMES = ("mer-bench", "editreward-bench", "mmrb2-edit", *T2I_NAMES)
T2I_PROTOCOL = "t2i-spatial"


@click.command()
@click.argument("name", type=click.Choice(NAMES))
@click.option("--data", "data", default=None, metavar="SOURCE",
              help="Hub dataset id (default: the benchmark's) or a local copy: a folder saved with save_to_disk, "
                   "or the parquet files as downloaded. spatial-pairs, geneval-position: a JSONL file (required).")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Output folder: images/, scores.jsonl (resumable), metrics.json, metrics.md.")
@click.option("--split", "splits", multiple=True, metavar="S", help="Only this split (repeatable) [default: all].")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N rows of each split, for a quick look.")
@click.option("--from", "from_scores", type=click.Path(dir_okay=False), default=None, metavar="DIR/scores.jsonl",
              help="Score a stored run without the model (aggregation flags rescore it).")
@click.option("--search", is_flag=True,
              help="Recompute the metric for a grid of aggregations from the raw scores; print the best and the "
                   "published default's rank.")
@click.option("--metrics", "metrics", type=click.Choice(["published", "strict", "both"]), default="both",
              show_default=True,
              help="published: as the authors' evaluation code computes them (overall from the raw scores, unrounded; "
                   "ties in index order); strict: from the recorded reward, any tie wrong; both: side by side.")
@click.option("--overwrite", is_flag=True, help="Judge afresh instead of resuming DIR/scores.jsonl.")
@click.option("--retry-errors", is_flag=True, help="On resume, judge again the edits recorded as errors.")
@judge_options
@quiet_option
@pass_params
def bench(params: dict) -> None:
    """Evaluate the judge on benchmark NAME: mer-bench, editreward-bench or mmrb2-edit;
    or, text-to-image under --protocol t2i-spatial on a local JSONL file,
    spatial-pairs (pairwise accuracy, per relation type) or geneval-position
    (GenEval-style position accuracy, verdicts against ground truth).

    Writes DIR/scores.jsonl (judge records; the same command resumes), DIR/metrics.json
    and DIR/metrics.md (printed on stdout, with the published baselines). The metrics come
    in two variants, side by side by default: published (as the paper's table was computed)
    and strict (tie-aware); the text-to-image benches have the strict one only.

    \b
    spatialreward bench mer-bench --data ./MER-Bench -o runs/mer
    spatialreward bench editreward-bench --data ./EditReward-Bench -o runs/erb --limit 50
    spatialreward bench mer-bench --from runs/mer/scores.jsonl --search
    spatialreward bench mer-bench --from runs/mer/scores.jsonl --metrics published
    spatialreward bench spatial-pairs --data examples/t2i/pairs.jsonl -o runs/pairs
    spatialreward bench geneval-position --data examples/t2i/t2i.jsonl -o runs/position
    """
    from ..bench import run as bench_run

    name = params["name"]
    quiet = params["quiet"]

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    if name in T2I_NAMES:
        config = _t2i_config(params, name, say)
    else:
        config = load_config(params["config_file"], config_overrides(params))

    if params["from_scores"]:
        for flag, key in (("--data", "data"), ("--split", "splits"), ("--limit", "limit")):
            if params[key]:
                raise click.UsageError(f"{flag} does not apply to --from (it scores the stored run as it is)")
        scores = Path(params["from_scores"])
        folder = Path(params["output"]) if params["output"] else scores.parent
    else:
        if not params["output"]:
            raise click.UsageError("-o DIR is required (or --from DIR/scores.jsonl to score a stored run)")
        folder = Path(params["output"])
        scores = folder / bench_run.SCORES
    # Every file this run writes is held from the start (before the folder is
    # prepared) to the end: a second run on DIR stops at once, before writing.
    written = [bench_run.METRICS_JSON, bench_run.METRICS_MD] + ([bench_run.SEARCH_JSON] if params["search"] else [])
    held = ([] if params["from_scores"] else [("-o", scores)]) + [("-o", folder / file) for file in written]
    with exclusive(*held):
        _bench(params, name, config, folder, scores, say)


def _t2i_config(params: dict, name: str, say):
    """The config of a text-to-image bench: always ``--protocol t2i-spatial``
    (another --protocol is refused; a config file's is replaced, said so); the
    flags that mean nothing to it refused before anything is read or loaded."""
    protocol = params.get("protocol")
    if protocol not in (None, T2I_PROTOCOL):
        raise click.UsageError(f"{name} judges text-to-image items (a prompt and an image): it runs under "
                               f"--protocol {T2I_PROTOCOL}, not --protocol {protocol}")
    for flag, key in (("--split", "splits"), ("--search", "search"), ("--aggregation", "aggregation"),
                      ("--weights", "weights"), ("--alpha", "alpha")):
        if params.get(key):
            raise click.UsageError(f"{flag} does not apply to {name}: its reward is t2i-spatial's (the config "
                                   "file's t2i: keys), not an aggregation of edit scores")
    if params["metrics"] == "published":
        raise click.UsageError(f"{name} has no published variant: its figures are computed from the recorded "
                               "reward (--metrics strict)")
    if not params["from_scores"] and not params["data"]:
        raise click.UsageError(f"{name} reads a local JSONL file: --data FILE is required")
    if params["config_file"]:
        configured = load_config(params["config_file"]).protocol
        if configured != T2I_PROTOCOL:
            say(f"{name}: judging under --protocol {T2I_PROTOCOL} (the config file's protocol {configured!r} "
                "does not judge text-to-image items)")
    return load_config(params["config_file"], {**config_overrides(params), "protocol": T2I_PROTOCOL})


def _bench_t2i(params: dict, name: str, config, folder: Path, scores: Path, say) -> None:
    """A text-to-image bench: the local JSONL file checked (before any model
    loads), both its items judged by the judge's own pipeline under
    t2i-spatial, the strict figures (from the recorded reward)."""
    from ..bench import run as bench_run
    from ..bench import t2i_common

    bench_module = bench_run.benchmark(name)
    if params["from_scores"]:
        items = bench_run.read_items(scores.parent, name)
    else:
        say(f"reading {name} from {params['data']} ...")
        prepared = t2i_common.prepare(bench_module, params["data"], folder, limit=params["limit"])
        say(f"{len(prepared.items)} units, {len(prepared.samples)} images to judge (--protocol {T2I_PROTOCOL})")
        _judge(params, config, prepared.samples, scores, params["quiet"])
        items = prepared.items
    records = t2i_common.load_records(scores)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = bench_run.evaluate(name, items, records, aggregation=None, scores=scores, variants=("strict",))
    metrics["protocol"] = T2I_PROTOCOL
    text = bench_run.write_metrics(folder, name, metrics)
    click.echo(text)  # the table is the command's data: stdout
    say(f"metrics: {folder / bench_run.METRICS_JSON}  {folder / bench_run.METRICS_MD}")


def _bench(params: dict, name: str, config, folder: Path, scores: Path, say) -> None:
    from ..bench import run as bench_run

    if name in T2I_NAMES:
        return _bench_t2i(params, name, config, folder, scores, say)
    variants = ("published", "strict") if params["metrics"] == "both" else (params["metrics"],)
    if params["from_scores"]:
        items = bench_run.read_items(scores.parent, name)
        rescored = any(params.get(k) is not None for k in ("aggregation", "weights", "alpha"))
        aggregation = config.aggregation if rescored else None
        records = bench_run.load_records(scores, aggregation)
        if not rescored and "published" in variants:  # the raw scores are recombined as the run combined them
            bench_run.recorded_aggregation(records, config.aggregation)
    else:
        source = params["data"] or bench_run.benchmark(name).HUB_ID
        say(f"reading {name} from {source} ...")
        prepared = bench_run.prepare(name, source, folder, splits=list(params["splits"]) or None,
                                     limit=params["limit"])
        say(f"{len(prepared.items)} units, {len(prepared.samples)} edits to judge; images in {folder / 'images'}")
        _judge(params, config, prepared.samples, scores, params["quiet"])
        aggregation = config.aggregation
        items = prepared.items
        records = bench_run.load_records(scores)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = bench_run.evaluate(name, items, records, aggregation=aggregation, scores=scores, variants=variants,
                                 published_with=config.aggregation)
    text = bench_run.write_metrics(folder, name, metrics)
    click.echo(text)  # the table is the command's data: stdout
    say(f"metrics: {folder / bench_run.METRICS_JSON}  {folder / bench_run.METRICS_MD}")
    if params["search"]:
        import json

        say(f"searching {len(list(bench_run.grid()))} aggregations over the stored raw scores ...")
        result = bench_run.search(name, items, scores)
        write_atomic(folder / bench_run.SEARCH_JSON, json.dumps(result, indent=2) + "\n")
        click.echo(bench_run.search_markdown(result))
        say(f"search: {folder / bench_run.SEARCH_JSON}")


def _judge(params: dict, config, samples, scores: Path, quiet: bool) -> None:
    from ..runner import run

    total = None if quiet else sum(1 for s in samples if s.group is None or s.candidate == 0)
    written = 0

    def on_record(record: dict) -> None:
        nonlocal written
        written += 1
        bar.record(record)

    try:
        engine = judge_for_output(params, config, scores)
        with progress(total=total, disable=quiet) as bar:
            report = run(engine, samples, scores, overwrite=params["overwrite"],
                         retry_errors=params["retry_errors"], on_record=on_record, on_skip=bar.skip)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {written} records written to {scores} by this run; run the same command "
                   "again to resume (edits already recorded are skipped)", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if not quiet:
        if report.skipped:
            click.echo(f"resumed: {report.skipped} edits already in {scores} were skipped", err=True)
        errors = report.summary.get("error")
        if errors:
            click.echo(f"error records: {errors} (their units are counted as not judged)", err=True)
