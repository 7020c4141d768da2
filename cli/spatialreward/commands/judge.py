"""``spatialreward judge``: score a manifest of edits."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from ..manifest import read_manifest
from ..output import refuse_overwriting, summary_path
from ..results import read_records
from ..summary import render_table
from .options import (
    backend_options,
    config_overrides,
    judge_for_output,
    judge_options,
    pass_params,
    quiet_option,
)
from .progress import count_entries, progress

# Interrupted by Ctrl-C (SIGINT): the shells' 128 + 2.
EXIT_INTERRUPTED = 130


@click.command()
@click.argument("manifest")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Results JSONL (default: stdout). Re-running on it resumes; the summary goes to NAME.summary.json.")
@click.option("--edited-dir", type=click.Path(file_okay=False), default=None,
              help="Folder manifests: judge the edited images in this folder instead of DIR/edited.")
@click.option("--overwrite", is_flag=True, help="Start the output afresh instead of resuming.")
@click.option("--retry-errors", is_flag=True, help="On resume, judge again the edits recorded as errors.")
@click.option("--strict", is_flag=True, help="Stop at the first bad input (exit 3) instead of recording it.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Judge on Ray Data across a cluster (--backend openai or vllm; needs -o; "
                   "pip install 'spatialreward[ray]').")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="--ray: the cluster to join (e.g. ray://head:10001, auto) [default: RAY_ADDRESS, else a local Ray].")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="--ray: requests in flight per --base-url endpoint (openai) [default 8]; vLLM engines placed "
                   "by Ray (vllm) [default: one per --tensor-parallel-size GPUs of the cluster].")
@judge_options
@quiet_option
@pass_params
def judge(params: dict) -> None:
    """Judge every edit of MANIFEST: a JSONL file, a folder, or - for stdin.

    Ctrl-C stops the run (exit 130); with -o, the same command resumes it.

    \b
    spatialreward judge edits.jsonl -o scores.jsonl
    spatialreward judge evalset/ --edited-dir runs/model-b/ -o b.jsonl
    """
    from ..runner import run

    backend_options(params)  # a flag of another backend: usage error before any work
    _check_ray_flags(params)
    config = load_config(params["config_file"], config_overrides(params))
    output = Path(params["output"]) if params["output"] else None
    if output is not None:
        manifest = Path(params["manifest"])
        refuse_overwriting(
            [("-o", output), ("-o's summary file", summary_path(output))],
            [("manifest", manifest), ("manifest's instructions.jsonl", manifest / "instructions.jsonl"),
             ("config file", params["config_file"])],
        )
    quiet = params["quiet"]
    samples = read_manifest(params["manifest"], edited_dir=params["edited_dir"])
    total = None if quiet else count_entries(params["manifest"])
    errors = ErrorIds()
    written = 0

    def on_record(record: dict) -> None:
        nonlocal written
        written += 1
        bar.record(record)
        if output is None:
            errors.add(record)

    try:
        if params["use_ray"]:
            def counted(record: dict) -> None:
                nonlocal written
                written += 1

            report = _run_ray(params, config, output, counted)
        else:
            engine = judge_for_output(params, config, output)
            with progress(total=total, disable=quiet) as bar:
                report = run(
                    engine, samples, output,
                    overwrite=params["overwrite"], retry_errors=params["retry_errors"], strict=params["strict"],
                    on_record=on_record, on_skip=bar.skip,
                )
    except KeyboardInterrupt:
        if output is not None:
            click.echo(f"interrupted: {written} records written to {output} by this run; run the same command "
                       "again to resume (edits already recorded are skipped)", err=True)
        else:
            click.echo("interrupted: the records went to stdout, so there is nothing to resume "
                       "(judge with -o FILE to be able to resume)", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if quiet:
        return
    notes = []
    if report.skipped:
        notes.append(f"resumed: {report.skipped} edits already in {output} were skipped")
    if report.resume.repaired_tail:
        notes.append("resumed: a torn last line or unfinished group from an interrupted run was removed")
    if report.resume.dropped:
        notes.append(f"--retry-errors: {report.resume.dropped} error records (and their groups) judged again")
    for note in notes:
        click.echo(note, err=True)
    # Data on stdout (the records, without -o), messages on stderr: the table is a message.
    click.echo(render_table(report.summary), err=True)
    if output is not None:
        for record in read_records(output):
            errors.add(record)
    if errors.count:
        click.echo(errors.line(), err=True)
    if report.summary_file:
        click.echo(f"records: {output}  summary: {report.summary_file}", err=True)


def _check_ray_flags(params: dict) -> None:
    """--ray's flags: one usage line (exit 2) for a combination it does not take."""
    if not params["use_ray"]:
        for flag, key in (("--ray-address", "ray_address"), ("--replicas", "replicas")):
            if params.get(key) is not None:
                raise click.UsageError(f"{flag} applies only with --ray")
        return
    if params["backend"] not in ("openai", "vllm"):
        raise click.UsageError(f"--ray judges through OpenAI-compatible servers (--backend openai --base-url URL) or "
                               f"vLLM replicas it places (--backend vllm), not --backend {params['backend']}")
    if params["backend"] == "vllm" and params.get("device") not in (None, "", "auto"):
        raise click.UsageError("--device does not apply to --ray --backend vllm: each replica gets its GPUs from Ray "
                               "(--tensor-parallel-size per replica)")
    if params["backend"] == "openai" and not params["base_urls"]:
        raise click.UsageError("--ray needs the servers: --base-url http://HOST:PORT/v1 (repeat it for several)")
    if not params["output"]:
        raise click.UsageError("--ray needs -o FILE (the records are merged there; the run resumes from it)")
    if params["strict"]:
        raise click.UsageError("--strict does not apply to --ray (bad inputs are recorded as error records)")
    if params.get("concurrency") is not None:
        raise click.UsageError("--concurrency does not apply to --ray: --replicas N sets the requests in flight "
                               "per endpoint")


def _run_ray(params: dict, config, output: Path, on_record):
    """``judge --ray``: spatialreward.ray.run_manifest, progress lines on stderr."""
    from ..constants import DEFAULT_MODEL
    from ..ray import DEFAULT_REPLICAS, load_spec, run_manifest

    quiet = params["quiet"]
    options = backend_options(params)
    if params["backend"] == "vllm":
        from ..ray import load_vllm_spec

        if not quiet:
            click.echo(f"starting Ray and asking a replica's node for {config.model}'s dtype (backend vllm, --ray) ...",
                       err=True)
        spec = load_vllm_spec(config=config, replicas=params["replicas"], dtype=params["dtype"],
                              backend_options=options, address=params["ray_address"])
        if not quiet:
            click.echo(f"ray: {spec.replicas} vLLM replica(s), each {dict(spec.replica_resources)}", err=True)
    else:
        base_urls = options.pop("base_urls")
        api_key_env = options.pop("api_key_env", None)
        if not quiet:
            click.echo(f"checking the servers for {config.model} (backend openai, --ray) ...", err=True)
        spec = load_spec(base_urls=base_urls, config=config, api_key_env=api_key_env,
                         replicas=params["replicas"] or DEFAULT_REPLICAS, backend_options=options,
                         model_explicit=params.get("model") is not None or config.model != DEFAULT_MODEL)

    def on_progress(done: int, total: int) -> None:
        if not quiet:
            click.echo(f"ray: {done}/{total} edits judged", err=True)

    if params["manifest"] == "-":  # stdin is read once; the run walks the manifest more than once
        samples = list(read_manifest("-"))
        read_samples = lambda: iter(samples)  # noqa: E731
    else:
        read_samples = lambda: read_manifest(params["manifest"], edited_dir=params["edited_dir"])  # noqa: E731
    return run_manifest(spec, read_samples, output, overwrite=params["overwrite"],
                        retry_errors=params["retry_errors"], threshold=config.threshold,
                        address=params["ray_address"], on_record=on_record, on_progress=on_progress)


class ErrorIds:
    """The first few ids of error records, and how many there are."""

    SHOWN = 10

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.count = 0

    def add(self, record: dict) -> None:
        if record.get("status") == "ok":
            return
        self.count += 1
        if len(self.ids) < self.SHOWN:
            stage = (record.get("error") or {}).get("stage", "?")
            self.ids.append(f"{record.get('id')} ({stage})")

    def line(self) -> str:
        more = f" and {self.count - len(self.ids)} more" if self.count > len(self.ids) else ""
        return f"error records ({self.count}): {', '.join(self.ids)}{more}"
