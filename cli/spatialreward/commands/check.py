"""``spatialreward check``: judge one edit and print a readable verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_config
from ..errors import EXIT_ERROR, EXIT_FAILED, EXIT_OK, SpatialRewardError
from ..explain import verdict_lines
from .options import (
    backend_options,
    config_overrides,
    judge_options,
    load_judge,
    pass_params,
)


@click.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("edited", type=click.Path(dir_okay=False))
@click.argument("instruction")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record `judge` would write.")
@click.option("--overlay", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a side-by-side picture (source | edited with the predicted regions) to this PNG.")
@judge_options
@pass_params
def check(params: dict) -> None:
    """Judge one edit: SOURCE and EDITED images, and the INSTRUCTION.

    Exit status: 0 the edit passes the threshold, 1 it does not, 3 it could not
    be judged (bad image, model or parse error), 2 usage error.

    \b
    spatialreward check cat.png cat_no_dog.png "Remove the dog" --overlay verdict.png
    """
    backend_options(params)  # a flag of another backend: usage error before any work
    config = load_config(params["config_file"], config_overrides(params))
    _check_inputs(params)  # before the model loads: a typo must not cost a model load
    engine = load_judge(params, config)
    result = engine.score(params["source"], params["edited"], params["instruction"])
    record = result.to_record()
    if params["as_json"]:
        click.echo(json.dumps(record, ensure_ascii=False, indent=2))
    else:
        for line in verdict_lines(record, config.threshold, style=click.style):
            click.echo(line)
    if params["overlay"]:
        _write_overlay(params, record, config.threshold)
    if not result.ok:
        click.echo(f"Error: the edit could not be judged ({result.error.stage}): {result.error.message}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR)
    raise click.exceptions.Exit(EXIT_OK if record["reward"] >= config.threshold else EXIT_FAILED)


def _check_inputs(params: dict) -> None:
    """Fail (exit 3, one line) on an unreadable image or an empty instruction."""
    from ..errors import InputError
    from ..images import load_image

    try:
        load_image(params["source"], role="source")
        load_image(params["edited"], role="edited")
    except InputError as exc:
        raise SpatialRewardError(exc.message) from None
    if not params["instruction"].strip():
        raise SpatialRewardError("the instruction is empty")


def _write_overlay(params: dict, record: dict, threshold: float) -> None:
    from ..errors import InputError
    from ..images import load_image
    from ..overlay import render_overlay

    try:
        source = load_image(params["source"], role="source")
        edited = load_image(params["edited"], role="edited")
    except InputError as exc:
        click.echo(f"no overlay: {exc.message}", err=True)
        return
    picture, _ = render_overlay(source, edited, record, threshold=threshold)
    path = Path(params["overlay"])
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    click.echo(f"overlay: {path}", err=True)
