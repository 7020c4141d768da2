"""A batch run: manifest -> judge -> ranked records -> results file -> summary.

Used by ``spatialreward judge``; usable from Python too (``run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import StrictStop
from .judge import Judge
from .output import RecordWriter, ResumeState, id_key, iter_records, prepare, summary_path
from .records import rank_group
from .sample import Sample
from .summary import SummaryBuilder, summarize


@dataclass
class RunReport:
    summary: dict
    written: int  # records written by this run
    skipped: int  # edits already in the output (resume)
    resume: ResumeState
    summary_file: Path | None


def _pending(samples: Iterable[Sample], done: set[bytes]) -> Iterator[Sample]:
    for sample in samples:
        if id_key(sample.id) not in done:
            yield sample


def run(
    judge: Judge,
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
    """
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

    written = 0
    group: list[dict] = []
    try:
        for result in judge.score_many(counted(samples)):
            # Results arrive in manifest order, so this is the first bad input,
            # whether the manifest line or its image was bad.
            if strict and result.error is not None and result.error.stage == "input":
                raise StrictStop(f"--strict: {result.error.message}")
            record = result.to_record()
            if group and record.get("group") != group[0]["group"]:
                written += _flush_group(writer, group, on_record)
            if record.get("group") is not None:
                group.append(record)
                if len(group) == record["group_size"]:
                    written += _flush_group(writer, group, on_record)
                continue
            writer.write([record])
            written += 1
            on_record(record)
        written += _flush_group(writer, group, on_record)
    finally:
        writer.close()

    summary_file = None
    if output is None:
        summary = streamed.result()
    else:  # the whole file: records of earlier (resumed) runs count too
        summary = summarize(iter_records(output), judge.config.threshold)
        summary_file = summary_path(output)
        summary_file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return RunReport(summary=summary, written=written, skipped=skipped, resume=resume, summary_file=summary_file)


def _flush_group(writer: RecordWriter, group: list[dict], on_record) -> int:
    if not group:
        return 0
    records = rank_group(list(group))
    for record in records:  # normally equal; smaller if a candidate was refused as a duplicate id
        record["group_size"] = len(records)
    writer.write(records)
    for record in records:
        on_record(record)
    group.clear()
    return len(records)
