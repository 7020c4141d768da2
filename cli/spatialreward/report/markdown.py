"""The summary as Markdown, for a PR comment or a CI job summary.

Input: the summary dict of ``spatialreward.summary.summarize`` and a list of
records (the worst ones, in the order to show them). Every text taken from a
record is escaped for a Markdown table cell: it can neither break the table
(pipes, newlines) nor inject markup (HTML, links, emphasis).
"""

from __future__ import annotations

import re

from ..summary import MIXED_KIND, STAGES, judged_line, metric_digits, metrics_of

INSTRUCTION_CHARS = 80
MESSAGE_CHARS = 120

_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_SPACES = re.compile(r"\s+")


def md_escape(text, limit: int | None = None) -> str:
    """One-line, literal Markdown text: whitespace runs (newlines included)
    become one space, ``&`` an entity, and Markdown/HTML punctuation
    (``\\ ` * _ [ ] < > | ~``) is backslash-escaped. ``limit`` truncates
    (before escaping) with an ellipsis."""
    text = _SPACES.sub(" ", "" if text is None else str(text)).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return _SPECIAL.sub(r"\\\1", text.replace("&", "&amp;"))


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


_NOUNS = {"t2i": ("image", "images", "prompt"), MIXED_KIND: ("record", "records", "instruction / prompt")}


def _nouns(summary: dict) -> tuple[str, str, str]:
    """(singular, plural, what the text is) for a summary's kind of records."""
    return _NOUNS.get(summary.get("kind"), ("edit", "edits", "instruction"))


def _errors_text(errors: dict) -> str:
    stages = list(STAGES) + sorted(s for s in errors if s not in STAGES)
    return ", ".join(f"{md_escape(stage)} {errors.get(stage, 0)}" for stage in stages)


def _status(record: dict) -> str:
    if record.get("status") == "ok":
        return "ok"
    error = record.get("error") or {}
    return f"error ({md_escape(error.get('stage', 'unknown'))}): {md_escape(error.get('message', ''), MESSAGE_CHARS)}"


WORST_NOTE = "errors first, then the lowest rewards"


def render_markdown(summary: dict, records_worst: list[dict], *, title: str = "SpatialReward report",
                    source: str | None = None, worst_note: str | None = WORST_NOTE) -> str:
    """Markdown: title, counts, pass rate, metrics table (mean/median/p10/p90),
    errors by stage, per-category table (when the summary has categories) and
    a "worst edits" table of ``records_worst`` (records as in the results file;
    only ``id``, ``status``, ``error``, ``reward`` and ``instruction`` are
    read), in the order given. A summary of text-to-image records (``kind``
    t2i) shows their metrics (reward, spatial, presence, verified_fraction)
    and a relations table, and speaks of images and prompts.

    ``source`` (the scores file's name) is shown under the title; ``worst_note``
    describes the order of ``records_worst`` in the table's heading."""
    _, plural, text_name = _nouns(summary)
    kind = summary.get("kind", "edit")
    out = [f"# {md_escape(title)}", ""]
    if source:
        out += [f"Scores: `{source.replace('`', '')}`", ""]
    errors = summary.get("errors_by_stage") or {}
    if kind == MIXED_KIND:
        kinds = summary.get("kinds") or {}
        out += [f"**Warning**: a mixed file: {kinds.get('edit', 0)} edit records and {kinds.get('t2i', 0)} "
                "text-to-image (t2i) records; their rewards are not comparable.", ""]
    out.append(
        f"**{summary['total']} {plural}**: {summary['ok']} ok, {summary['error']} error "
        f"({_errors_text(errors)}), {summary.get('repaired', 0)} repaired"
    )
    out.append("")
    rate = summary.get("pass_rate")
    threshold = summary.get("threshold")
    judged = judged_line(summary, plural)
    out.append(
        f"**Pass rate** at reward ≥ {threshold:g}: "
        + (f"– (no judged {plural})" if rate is None
           else f"**{_pct(rate)}** ({summary['passed']}/{summary['ok']} judged {plural})")
        + (f" — **only {judged}** (not in the pass rate nor the means)" if judged else "")
    )
    out.append("")

    out += ["| metric | mean | median | p10 | p90 |", "|---|---:|---:|---:|---:|"]
    stats = summary.get("stats") or {}
    for metric in metrics_of(kind):
        s = stats.get(metric)
        d = metric_digits(metric)
        if s is None:
            out.append(f"| {metric} | – | – | – | – |")
        else:
            out.append(f"| {metric} | {_num(s['mean'], d)} | {_num(s['median'], d)} | {_num(s['p10'], d)} | {_num(s['p90'], d)} |")
    out.append("")

    relations = summary.get("relations")
    if relations:
        decided = relations.get("decided_by") or {}
        out += ["**Relations**", "", "| relations judged | decided by geometry | by the model alone | undecided "
                "| model/geometry agreement |", "|---:|---:|---:|---:|---:|",
                f"| {relations.get('judged', 0)} | {decided.get('geometry', 0)} | {decided.get('model', 0)} | "
                f"{decided.get('none', 0)} | {_pct(relations.get('agreement_rate'))} "
                f"({relations.get('agreed', 0)}/{relations.get('compared', 0)}) |", ""]

    if summary.get("error"):
        out += ["**Errors by stage**", "", "| stage | count |", "|---|---:|"]
        for stage in list(STAGES) + sorted(s for s in errors if s not in STAGES):
            if errors.get(stage):
                out.append(f"| {md_escape(stage)} | {errors[stage]} |")
        out.append("")

    categories = summary.get("categories") or {}
    if categories:
        out += ["**By category**", "", f"| category | {plural} | ok | error | mean reward | pass rate |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, cat in categories.items():
            reward = (cat.get("stats") or {}).get("reward")
            out.append(
                f"| {md_escape(name, 40)} | {cat['total']} | {cat['ok']} | {cat['error']} | "
                f"{_num(reward and reward['mean'], 3)} | {_pct(cat.get('pass_rate'))} |"
            )
        out.append("")

    if records_worst:
        heading = f"**Worst {plural}** ({len(records_worst)} of {summary['total']}"
        heading += f"; {worst_note})" if worst_note else ")"
        out += [heading, "",
                f"| # | id | reward | {text_name} | status |", "|---:|---|---:|---|---|"]
        for position, record in enumerate(records_worst, start=1):
            reward = record.get("reward") if record.get("status") == "ok" else None
            out.append(
                f"| {position} | {md_escape(record.get('id'), 60)} | {_num(reward, 3)} | "
                f"{md_escape(record.get('instruction'), INSTRUCTION_CHARS)} | {_status(record)} |"
            )
        out.append("")
    return "\n".join(out)
