"""A batch run: manifest -> judge -> ranked records -> results file -> summary.

Used by ``spatialreward judge``; usable from Python too (``run``).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config import JudgeConfig
from .errors import SpatialRewardError, StrictStop
from .judge import Judge
from .output import RecordWriter, ResumeState, exclusive, prepare, summary_path, write_atomic
from .records import rank_group
from .results import Unit, id_key, walk_units
from .sample import Sample
from .summary import SummaryBuilder, summarize_file

log = logging.getLogger("spatialreward")


@dataclass
class RunReport:
    summary: dict
    written: int  # records written by this run
    skipped: int  # edits already in the output (resume)
    resume: ResumeState
    summary_file: Path | None


class DeferredJudge:
    """A Judge loaded when the first edit left to judge arrives.

    ``run`` needs only the config hash before judging (to check a results file
    it resumes) and the config; ``identity`` (``judge.identity_before_load``)
    gives the hash without the model. So a finished run, or a file of another
    config, answers in seconds rather than after a model load."""

    def __init__(self, load: Callable[[], Judge], config: JudgeConfig, identity: tuple[str, str]):
        self._load = load
        self.config = config
        self.judge_hash, self.config_hash = identity
        self.loaded: Judge | None = None

    def score_many(self, samples: Iterable[Sample]) -> Iterator:
        iterator = iter(samples)
        for first in iterator:  # only when there is an edit to judge
            yield from self.load().score_many(itertools.chain([first], iterator))
            return

    def load(self) -> Judge:
        if self.loaded is None:
            judge = self._load()
            if (judge.judge_hash, judge.config_hash) != (self.judge_hash, self.config_hash):
                raise SpatialRewardError(
                    f"internal error: the loaded judge's hash {judge.judge_hash} is not the {self.judge_hash} its "
                    f"backend announced before loading; please report it (judge with --overwrite meanwhile)")
            self.loaded = judge
        return self.loaded


def run(
    judge: Judge | DeferredJudge,
    samples: Iterable[Sample],
    output: Path | None,
    *,
    overwrite: bool = False,
    retry_errors: bool = False,
    strict: bool = False,
    on_record: Callable[[dict], None] | None = None,
    on_skip: Callable[[Sample], None] | None = None,
) -> RunReport:
    """Judge ``samples`` into ``output`` (JSONL; ``None`` = stdout, no resume).

    Records are written as results arrive, in manifest order; a multi-candidate
    group is written once all its candidates are judged, ranked. ``on_record``
    sees each record written, ``on_skip`` each sample skipped as already recorded.
    The results file is held for the whole run: a second run on it stops at once.
    """
    options = dict(overwrite=overwrite, retry_errors=retry_errors, strict=strict, on_record=on_record, on_skip=on_skip)
    if output is None:
        return _run(judge, samples, None, **options)
    with exclusive(output):  # before anything reads or cuts the file
        return _run(judge, samples, output, **options)


def _run(judge: Judge | DeferredJudge, samples: Iterable[Sample], output: Path | None, *, overwrite: bool,
         retry_errors: bool, strict: bool, on_record: Callable[[dict], None] | None,
         on_skip: Callable[[Sample], None] | None) -> RunReport:
    resume = ResumeState()
    if output is not None:
        resume = prepare(output, judge.config_hash, overwrite=overwrite, retry_errors=retry_errors)
    skipped = 0

    def counted(items: Iterable[Sample]) -> Iterator[Sample]:
        nonlocal skipped
        for sample in items:
            if id_key(sample.id) in resume.done:
                skipped += 1
                if on_skip:
                    on_skip(sample)
                continue
            yield sample

    writer = RecordWriter(output)
    # Records going to stdout are summarised as they stream; a results file is
    # summarised from the file at the end (it holds resumed records too).
    streamed = SummaryBuilder(judge.config.threshold) if output is None else None
    user_callback = on_record

    def on_record(record: dict) -> None:
        if streamed is not None:
            streamed.add(record)
        if user_callback:
            user_callback(record)

    def records() -> Iterator[dict]:
        for result in judge.score_many(counted(samples)):
            # Results arrive in manifest order, so this is the first bad input,
            # whether the manifest line or its image was bad.
            if strict and result.error is not None and result.error.stage == "input":
                where, message = result.sample.origin, result.error.message
                if where and not message.startswith(where):
                    message = f"{where}: {message}"  # the manifest line, also for an image error
                raise StrictStop(f"--strict: {message}")
            yield result.to_record()

    written = 0
    try:
        # A single record is written as it arrives, a group once all its
        # candidates are judged (or the next edit shows it ended early), ranked.
        for unit in walk_units(records()):
            written += _write_unit(writer, unit, on_record)
    finally:
        writer.close()

    if written == 0 and skipped == 0:
        log.warning("the manifest holds no edits: nothing was judged")
    summary_file = None
    if output is None:
        summary = streamed.result()
    else:  # the whole file: records of earlier (resumed) runs count too
        summary = summarize_file(output, judge.config.threshold)
        summary_file = summary_path(output)
        write_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return RunReport(summary=summary, written=written, skipped=skipped, resume=resume, summary_file=summary_file)


def _write_unit(writer: RecordWriter, unit: Unit[dict], on_record) -> int:
    records = unit.items
    if unit.group is not None:
        records = rank_group(records)
        for record in records:  # normally equal; smaller if a candidate was refused as a duplicate id
            record["group_size"] = len(records)
    writer.write(records)
    for record in records:
        on_record(record)
    return len(records)
