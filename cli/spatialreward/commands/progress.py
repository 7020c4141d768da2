"""Progress of a judge run on stderr.

On a terminal: a tqdm bar with the total and an ETA. Otherwise (CI logs,
nohup, a pipe): a plain line every ``SPATIALREWARD_PROGRESS_INTERVAL`` seconds
(default 10) or every 10 % of the total, whichever comes first.

Progress counts manifest entries (lines of a JSONL manifest, lines of a
folder manifest's instructions.jsonl): a multi-candidate line is one entry.
Entries skipped on resume come off the total, so the rate and the ETA are
those of this run's work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

INTERVAL_ENV = "SPATIALREWARD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def count_entries(spec: str) -> int | None:
    """The number of non-blank manifest lines, counted without parsing them;
    None for stdin or when the manifest cannot be read (the run says why)."""
    if str(spec) == "-":
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "instructions.jsonl"
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts entries as records (or resume skips) come in; shows them."""

    def __init__(self, total: int | None, show) -> None:
        self.total = total
        self._show = show  # called after each change: show(self)
        self._last_group: object = None
        self.done = 0
        self.started = time.monotonic()

    def _entry(self, group) -> bool:
        """Whether a record/sample of ``group`` starts a new manifest entry."""
        if group is None:
            self._last_group = None
            return True
        if group != self._last_group:
            self._last_group = group
            return True
        return False

    def record(self, record: dict) -> None:
        if self._entry(record.get("group")):
            self.done += 1
            self._show(self, skipped=False)

    def skip(self, sample) -> None:
        if self._entry(sample.group) and self.total is not None:
            self.total = max(self.done, self.total - 1)
            self._show(self, skipped=True)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        if self.total is None:
            return f"progress: {self.done} entries, {rate:.2f} entries/s"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        return f"progress: {self.done}/{self.total} entries ({percent:.0f}%), {rate:.2f} entries/s, ETA {eta}"


class _Lines:
    """Plain progress lines for a stderr that is not a terminal."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_time = time.monotonic()
        self.last_step = 0  # tenths of the total already reported

    def __call__(self, progress: Progress, *, skipped: bool) -> None:
        if skipped:
            return
        now = time.monotonic()
        step = 10 * progress.done // progress.total if progress.total else 0
        if now - self.last_time >= self.interval or step > self.last_step:
            self.last_time, self.last_step = now, step
            print(progress.line(), file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(*, total: int | None, disable: bool):
    """A ``Progress`` shown on stderr (nothing shown when ``disable``)."""
    if disable:
        yield Progress(total, lambda *a, **k: None)
        return
    if not sys.stderr.isatty():
        yield Progress(total, _Lines(_interval()))
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="entry", desc="judging", file=sys.stderr, dynamic_ncols=True) as bar:
        def show(state: Progress, *, skipped: bool) -> None:
            if skipped:
                bar.total = state.total
                bar.refresh()
            else:
                bar.update(1)

        state = Progress(total, show)
        yield state
