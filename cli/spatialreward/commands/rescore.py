"""``spatialreward rescore``: new rewards from stored raw scores, no model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_config
from ..output import RecordWriter, refuse_overwriting, summary_path
from ..rescore import rescore as rescore_records
from ..results import read_records
from ..summary import SummaryBuilder, render_table
from .options import aggregation_options, config_option, config_overrides, pass_params, quiet_option


@click.command()
@click.argument("scores", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), required=True,
              help="New results JSONL (its summary goes to NAME.summary.json).")
@config_option
@aggregation_options
@quiet_option
@pass_params
def rescore(params: dict) -> None:
    """Recompute rewards in SCORES with another aggregation, without the model.

    \b
    spatialreward rescore scores.jsonl -o mean.jsonl --aggregation mean
    spatialreward rescore scores.jsonl -o w.jsonl --weights 0.7,0.3,0.5,0.5 --alpha 0.6
    """
    config = load_config(params["config_file"], config_overrides(params))
    source, output = Path(params["scores"]), Path(params["output"])
    refuse_overwriting([("-o", output), ("-o's summary file", summary_path(output))],
                       [("scores file", source), ("config file", params["config_file"])])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"")
    writer = RecordWriter(output)
    builder = SummaryBuilder(config.threshold)
    try:
        for record in rescore_records(read_records(source), config.aggregation):
            writer.write([record])
            builder.add(record)
    finally:
        writer.close()
    summary = builder.result()
    summary_file = summary_path(output)
    summary_file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not params["quiet"]:
        click.echo(render_table(summary), err=True)  # a message: stderr, like every command's
        click.echo(f"records: {output}  summary: {summary_file}", err=True)
