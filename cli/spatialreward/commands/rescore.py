"""``spatialreward rescore``: new rewards from stored raw scores, no model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_config
from ..output import RecordWriter, exclusive, refuse_overwriting, replacing, summary_path, write_atomic
from ..rescore import rescore as rescore_records
from ..results import is_t2i, read_records
from ..summary import SummaryBuilder, render_table
from .options import aggregation_options, config_option, config_overrides, pass_params


@click.command()
@click.argument("scores", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), required=True,
              help="New results JSONL (its summary goes to NAME.summary.json).")
@config_option
@aggregation_options
@click.option("--quiet", "-q", is_flag=True,
              help="Print less: no summary table, no closing line naming the files written.")
@pass_params
def rescore(params: dict) -> None:
    """Recompute rewards in SCORES with another aggregation, without the model.

    Text-to-image records (--protocol t2i-spatial) are re-scored with the t2i
    reward weights of the config (key t2i: model, geometry, spatial_exponent,
    missing_box_fails) from their stored scores and relation verdicts;
    --aggregation, --weights and --alpha do not apply to them.

    \b
    spatialreward rescore scores.jsonl -o mean.jsonl --aggregation mean
    spatialreward rescore scores.jsonl -o w.jsonl --weights 0.7,0.3,0.5,0.5 --alpha 0.6
    spatialreward rescore t2i.jsonl -o t2i-geo.jsonl --config t2i-weights.yaml
    """
    config = load_config(params["config_file"], config_overrides(params))
    source, output = Path(params["scores"]), Path(params["output"])
    refuse_overwriting([("-o", output), ("-o's summary file", summary_path(output))],
                       [("scores file", source), ("config file", params["config_file"])])
    summary_file = summary_path(output)
    builder = SummaryBuilder(config.threshold)
    aggregation_flags = [f"--{name}" for name in ("aggregation", "weights", "alpha") if params.get(name) is not None]
    t2i_count = 0
    # Held before anything is read or written (a `judge -o` writing this file
    # holds it too); the new file replaces the old one whole, once complete.
    with exclusive(output), replacing(output) as partial:
        writer = RecordWriter(partial)
        try:
            for record in rescore_records(read_records(source), config.aggregation, config.t2i):
                writer.write([record])
                builder.add(record)
                t2i_count += is_t2i(record)
        finally:
            writer.close()
        summary = builder.result()
        write_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    if t2i_count and aggregation_flags:
        verb = "does" if len(aggregation_flags) == 1 else "do"
        click.echo(f"note: {', '.join(aggregation_flags)} {verb} not apply to the {t2i_count} text-to-image (t2i) records: "
                   "they were re-scored with the config's t2i weights (config key t2i: model, geometry, "
                   "spatial_exponent, missing_box_fails)", err=True)
    if not params["quiet"]:
        click.echo(render_table(summary), err=True)  # a message: stderr, like every command's
        click.echo(f"records: {output}  summary: {summary_file}", err=True)
