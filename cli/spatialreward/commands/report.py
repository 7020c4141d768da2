"""``spatialreward report``: a self-contained HTML page (and optionally a
Markdown summary) for reviewing a results file."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from ..errors import SpatialRewardError
from ..output import exclusive, refuse_overwriting
from .options import config_option, pass_params


@click.command()
@click.argument("scores", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), required=True,
              help="The HTML report to write (one self-contained file).")
@click.option("--markdown", "markdown", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the summary as Markdown (for a PR comment or a CI job summary).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Keep only the N worst rows in the table (a group is one row); the summary still covers all.")
@click.option("--images", type=click.IntRange(min=0), default=None,
              help="Embed thumbnails for the first N edits of the default (worst-first) order [default 300].")
@click.option("--worst", type=click.IntRange(min=0), default=None,
              help="Rows of the Markdown 'worst edits' table [default 10].")
@click.option("--threshold", type=float, default=None, help="Per-edit pass threshold on the reward [default 0.5].")
@click.option("--title", default=None, help="Page and Markdown title [default: 'SpatialReward report: SCORES'].")
@config_option
@click.option("--quiet", "-q", is_flag=True,
              help="Print less: no closing lines naming the files written (warnings and errors still print).")
@pass_params
def report(params: dict) -> None:
    """Write an HTML report of SCORES (a results JSONL file) for reviewing a batch.

    \b
    spatialreward report scores.jsonl -o report.html
    spatialreward report scores.jsonl -o report.html --markdown summary.md --limit 1000
    """
    from ..report import DEFAULT_IMAGES, DEFAULT_WORST, write_html_report

    overrides = {"threshold": params["threshold"]} if params["threshold"] is not None else None
    config = load_config(params["config_file"], overrides)
    source, output = Path(params["scores"]), Path(params["output"])
    refuse_overwriting([("-o", output), ("--markdown", params["markdown"])],
                       [("scores file", source), ("config file", params["config_file"])])
    if params["markdown"] and Path(params["markdown"]).resolve() == output.resolve():
        raise click.UsageError("--markdown must differ from -o")
    try:
        with exclusive(("-o", output), ("--markdown", params["markdown"])):  # until both are written
            data = write_html_report(
                source, output,
                threshold=config.threshold,
                limit=params["limit"],
                images=DEFAULT_IMAGES if params["images"] is None else params["images"],
                title=params["title"],
                markdown_path=params["markdown"],
                markdown_worst=DEFAULT_WORST if params["worst"] is None else params["worst"],
            )
    except OSError as exc:  # an unwritable output folder, an unreadable scores file
        raise SpatialRewardError(f"{exc.filename or output}: {exc.strerror or exc}") from None
    hashes = data.summary.get("config_hash")
    if isinstance(hashes, list):  # the gate refuses such a file; the report shows it, with a warning
        click.echo(f"warning: {source} mixes records of {len(hashes)} configs ({', '.join(hashes)}): their rewards "
                   "were judged or aggregated differently and are not comparable; rescore them to one aggregation "
                   "or report each run apart", err=True)
    if not params["quiet"]:
        summary = data.summary
        rows = f"{len(data.units)} of {data.units_total} rows" if len(data.units) < data.units_total else f"{data.units_total} rows"
        click.echo(f"report: {output} ({output.stat().st_size / 1e6:.1f} MB, {rows}; "
                   f"{summary['total']} {'images' if summary.get('kind') == 't2i' else 'edits'}, {summary['ok']} ok, {summary['error']} error)", err=True)
        if params["markdown"]:
            click.echo(f"markdown: {params['markdown']}", err=True)
