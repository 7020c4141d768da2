"""``spatialreward bench``: the published benchmark evaluations in one command."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from .judge import EXIT_INTERRUPTED
from .options import (
    config_overrides,
    judge_options,
    load_judge,
    pass_params,
    quiet_option,
)
from .progress import progress

NAMES = ("mer-bench", "editreward-bench", "mmrb2-edit")


@click.command()
@click.argument("name", type=click.Choice(NAMES))
@click.option("--data", "data", default=None, metavar="SOURCE",
              help="Hub dataset id (default: the benchmark's) or a local copy: a folder saved with save_to_disk, "
                   "or the parquet files as downloaded.")
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
@click.option("--overwrite", is_flag=True, help="Judge afresh instead of resuming DIR/scores.jsonl.")
@click.option("--retry-errors", is_flag=True, help="On resume, judge again the edits recorded as errors.")
@judge_options
@quiet_option
@pass_params
def bench(params: dict) -> None:
    """Evaluate the judge on benchmark NAME: mer-bench, editreward-bench or mmrb2-edit.

    Writes DIR/scores.jsonl (judge records; the same command resumes), DIR/metrics.json
    and DIR/metrics.md (printed on stdout, with the published baselines).

    \b
    spatialreward bench mer-bench --data ./MER-Bench -o runs/mer
    spatialreward bench editreward-bench --data ./EditReward-Bench -o runs/erb --limit 50
    spatialreward bench mer-bench --from runs/mer/scores.jsonl --search
    """
    from ..bench import run as bench_run

    name = params["name"]
    quiet = params["quiet"]
    config = load_config(params["config_file"], config_overrides(params))

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    if params["from_scores"]:
        for flag, key in (("--data", "data"), ("--split", "splits"), ("--limit", "limit")):
            if params[key]:
                raise click.UsageError(f"{flag} does not apply to --from (it scores the stored run as it is)")
        scores = Path(params["from_scores"])
        folder = Path(params["output"]) if params["output"] else scores.parent
        items = bench_run.read_items(scores.parent, name)
        rescored = any(params.get(k) is not None for k in ("aggregation", "weights", "alpha"))
        aggregation = config.aggregation if rescored else None
        records = bench_run.load_records(scores, aggregation)
    else:
        if not params["output"]:
            raise click.UsageError("-o DIR is required (or --from DIR/scores.jsonl to score a stored run)")
        folder = Path(params["output"])
        scores = folder / bench_run.SCORES
        source = params["data"] or bench_run.benchmark(name).HUB_ID
        say(f"reading {name} from {source} ...")
        prepared = bench_run.prepare(name, source, folder, splits=list(params["splits"]) or None,
                                     limit=params["limit"])
        say(f"{len(prepared.items)} units, {len(prepared.samples)} edits to judge; images in {folder / 'images'}")
        _judge(params, config, prepared.samples, scores, quiet)
        aggregation = config.aggregation
        items = prepared.items
        records = bench_run.load_records(scores)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = bench_run.evaluate(name, items, records, aggregation=aggregation, scores=scores)
    text = bench_run.write_metrics(folder, name, metrics)
    click.echo(text)  # the table is the command's data: stdout
    say(f"metrics: {folder / bench_run.METRICS_JSON}  {folder / bench_run.METRICS_MD}")
    if params["search"]:
        import json

        say(f"searching {len(list(bench_run.grid()))} aggregations over the stored raw scores ...")
        result = bench_run.search(name, items, scores)
        (folder / bench_run.SEARCH_JSON).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
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
        engine = load_judge(params, config)
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
