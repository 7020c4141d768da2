"""``spatialreward gate``: pass or fail a judged run on thresholds and a baseline."""

from __future__ import annotations

from pathlib import Path

import click

from .. import github
from ..errors import EXIT_FAILED, EXIT_OK
from ..gate import load_gate_config, run_gate
from ..gate_render import annotations, render_markdown, render_terminal, step_outputs
from ..output import exclusive, refuse_overwriting, write_atomic
from .options import pass_params


def _dimension(ctx, param, values):
    out = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"expected DIMENSION=MIN, e.g. success=15, not {value!r}") from None
        if not sep:
            raise click.BadParameter(f"expected DIMENSION=MIN, e.g. success=15, not {value!r}")
    return out


@click.command()
@click.argument("scores", type=click.Path(dir_okay=False))
@click.option("--config", "gate_file", type=click.Path(dir_okay=False), default=None, help="YAML gate file.")
@click.option("--min-mean-reward", type=float, default=None, help="Minimum mean reward (0..1).")
@click.option("--min-pass-rate", type=float, default=None, help="Minimum share of edits with reward >= --threshold.")
@click.option("--threshold", "pass_threshold", type=float, default=None, help="Per-edit pass threshold [default 0.5].")
@click.option("--min-dimension", "min_dimension_mean", multiple=True, callback=_dimension, metavar="DIM=MIN",
              help="Minimum mean of a raw dimension (0..25), e.g. success=15 (edits) or spatial=15 (t2i records: "
                   "spatial, presence); repeatable.")
@click.option("--max-errors", type=click.IntRange(min=0), default=None, help="Maximum error records [default 0].")
@click.option("--min-judged", type=click.IntRange(min=0), default=None, help="Minimum number of judged (ok) edits [default 1].")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, help="Scores of the baseline run, paired by id.")
@click.option("--max-drop", type=float, default=None, help="Tolerated mean reward drop vs the baseline: fails when the confidence interval of the "
              "mean change lies wholly below -MAX_DROP [default 0].")
@click.option("--allow-config-mismatch", is_flag=True, help="Compare with a baseline judged under another config.")
@click.option("--seed", type=int, default=None, help="Bootstrap seed [default 0].")
@click.option("--summary-md", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the Markdown summary here too (GitHub: also appended to $GITHUB_STEP_SUMMARY).")
@click.option("--title", default="spatialreward gate", show_default=True, help="Title of the Markdown summary.")
@pass_params
def gate(params: dict) -> None:
    """Pass (exit 0) or fail (exit 1) the judged run in SCORES; exit 3 for invalid input.

    \b
    spatialreward gate scores.jsonl --min-mean-reward 0.6 --min-pass-rate 0.8
    spatialreward gate scores.jsonl --config gate.yaml --baseline main.jsonl --max-drop 0.02
    """
    overrides = {k: params[k] for k in ("min_mean_reward", "min_pass_rate", "pass_threshold", "max_errors",
                                         "min_judged", "max_drop", "seed") if params[k] is not None}
    if params["min_dimension_mean"]:
        overrides["min_dimension_mean"] = params["min_dimension_mean"]
    refuse_overwriting([("--summary-md", params["summary_md"])],
                       [("scores file", params["scores"]), ("baseline", params["baseline"]),
                        ("gate file", params["gate_file"])])
    config = load_gate_config(params["gate_file"], overrides)
    # --summary-md is held from before the scores are read until it is written
    with exclusive(("--summary-md", params["summary_md"])):
        result = run_gate(Path(params["scores"]), config,
                          baseline=Path(params["baseline"]) if params["baseline"] else None,
                          allow_config_mismatch=params["allow_config_mismatch"])
        click.echo(render_terminal(result, style=click.style))
        markdown = render_markdown(result, title=params["title"]) + "\n" + _summary_markdown(result)
        if params["summary_md"]:
            write_atomic(Path(params["summary_md"]), markdown)
    github.append_step_summary(markdown)
    github.write_outputs(step_outputs(result))
    if github.in_actions():
        for level, title, message in annotations(result):
            click.echo(github.annotation(level, message, title=title))
    raise click.exceptions.Exit(EXIT_OK if result.passed else EXIT_FAILED)


def _summary_markdown(result) -> str:
    from ..report.markdown import render_markdown as summary_markdown

    return summary_markdown(result.summary, result.worst, title="Summary")
