"""A tqdm progress bar on stderr when it is a terminal."""

from __future__ import annotations

import contextlib
import sys


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(*, disable: bool, unit: str = "edit"):
    if disable or not sys.stderr.isatty():
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(unit=unit, desc="judging", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
