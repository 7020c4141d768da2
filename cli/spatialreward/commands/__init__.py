"""The ``spatialreward`` command: a thin click layer over the library."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..constants import DEBUG
from ..errors import EXIT_ERROR, SpatialRewardError


class _Group(click.Group):
    """Maps library errors to one-line messages and documented exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpatialRewardError as exc:
            if DEBUG:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001
            if DEBUG:
                raise
            click.echo(f"Error: unexpected {exc.__class__.__name__}: {exc} (set SPATIALREWARD_DEBUG=1 for the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spatialreward")
def main() -> None:
    """Score instruction-guided image edits with the SpatialReward-8B reward model.

    Exit codes: 0 completed / passed, 1 verdict failed (check, gate),
    2 usage error, 3 fatal error (the run could not be done).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log = logging.getLogger("spatialreward")
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if DEBUG else logging.INFO)


def _register() -> None:
    from .bench import bench
    from .check import check
    from .gate import gate
    from .judge import judge
    from .report import report
    from .rescore import rescore
    from .serve import serve

    main.add_command(judge)
    main.add_command(rescore)
    main.add_command(report)
    main.add_command(check)
    main.add_command(gate)
    main.add_command(bench)
    main.add_command(serve)


_register()
