"""``spatialreward check``: judge one edit and print a readable verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_config
from ..constants import MAX_SOURCES
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
@click.argument("source", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.argument("edited", type=click.Path(dir_okay=False))
@click.argument("instruction")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record `judge` would write.")
@click.option("--overlay", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a side-by-side picture (every source | edited with the predicted regions) to this PNG.")
@judge_options
@pass_params
def check(params: dict) -> None:
    """Judge one edit: SOURCE image(s), the EDITED image, and the INSTRUCTION.

    Several SOURCE images (1 to 8) make a multi-reference edit: the model sees
    them in the order given, then the edited image. With --protocol
    t2i-spatial: IMAGE and PROMPT (no source), a text-to-image output.

    Exit status: 0 the edit passes the threshold, 1 it does not, 3 it could not
    be judged (bad image, model or parse error), 2 usage error.

    \b
    spatialreward check cat.png cat_no_dog.png "Remove the dog" --overlay verdict.png
    spatialreward check room.png cat.png fused.png "Put the cat from the second image on the sofa"
    spatialreward check scene.png "a red ball to the left of a blue box" --protocol t2i-spatial
    """
    sources = list(params["source"])
    if len(sources) > MAX_SOURCES:
        raise click.UsageError(f"{len(sources)} SOURCE images; an edit takes 1 to {MAX_SOURCES}")
    backend_options(params)  # a flag of another backend: usage error before any work
    config = load_config(params["config_file"], config_overrides(params))
    from ..protocols import is_t2i

    if is_t2i(config.protocol) and sources:
        raise click.UsageError("--protocol t2i-spatial judges IMAGE PROMPT: no SOURCE image")
    if not is_t2i(config.protocol) and not sources:
        raise click.UsageError("give SOURCE EDITED INSTRUCTION (IMAGE PROMPT is for --protocol t2i-spatial)")
    _check_inputs(params)  # before the model loads: a typo must not cost a model load
    engine = load_judge(params, config)
    result = engine.score(_source_arg(params), params["edited"], params["instruction"])
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


def _source_arg(params: dict):
    """SOURCE as the judge takes it: one path, or the list of several in order."""
    sources = list(params["source"])
    if not sources:
        return None  # text-to-image
    return sources[0] if len(sources) == 1 else sources


def _roles(params: dict) -> list[tuple[str, str]]:
    """(path, role) of every image: the sources in order ("source", or "source 1",
    "source 2", ... when there are several), then the edited one."""
    sources = list(params["source"])
    named = [(path, "source" if len(sources) == 1 else f"source {k + 1}") for k, path in enumerate(sources)]
    return named + [(params["edited"], "edited" if sources else "image")]


def _check_inputs(params: dict) -> None:
    """Fail (exit 3, one line) on an unreadable image or an empty instruction."""
    from ..errors import InputError
    from ..images import load_image

    try:
        for path, role in _roles(params):
            load_image(path, role=role)
    except InputError as exc:
        raise SpatialRewardError(exc.message) from None
    if not params["instruction"].strip():
        raise SpatialRewardError("the instruction is empty" if params["source"] else "the prompt is empty")


def _write_overlay(params: dict, record: dict, threshold: float) -> None:
    from ..errors import InputError
    from ..images import load_image
    from ..overlay import render_overlay

    try:
        *sources, edited = [load_image(path, role=role) for path, role in _roles(params)]
    except InputError as exc:
        click.echo(f"no overlay: {exc.message}", err=True)
        return
    source = None if not sources else sources[0] if len(sources) == 1 else sources
    picture, _ = render_overlay(source, edited, record, threshold=threshold)
    path = Path(params["overlay"])
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    click.echo(f"overlay: {path}", err=True)
