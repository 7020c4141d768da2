"""Renderings of a gate result: the terminal verdict table, the Markdown job
summary, GitHub step outputs and annotations."""

from __future__ import annotations

from .gate import Check, Comparison, GateResult
from .summary import judged_line


def _noun(summary: dict) -> str:
    return {"t2i": "images", "mixed": "records"}.get(summary.get("kind"), "edits")


def _value(check: Check) -> str:
    if check.observed is None:
        return "-"
    if check.name in ("errors", "judged edits", "judged images"):
        return f"{check.observed:g}"
    if check.name == "pass rate":
        return f"{check.observed:.1%}"
    return f"{check.observed:.3f}" if check.name == "mean reward" else f"{check.observed:.2f}"


def _limit(check: Check) -> str:
    limit = f"{check.limit:.1%}" if check.name == "pass rate" else f"{check.limit:g}"
    return f"{check.kind} {limit}"


def comparison_lines(comparison: Comparison) -> list[str]:
    c = comparison
    lines = [f"baseline: {c.paired} paired edits"]
    if c.mean_delta is not None:
        lines.append(
            f"  mean reward change {c.mean_delta:+.4f}, {c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]; "
            f"wins {c.wins}, ties {c.ties}, losses {c.losses}"
        )
        verdict = "REGRESSION" if c.regression else "no regression"
        bound = f"-{c.max_drop:g}" if c.max_drop else "0"
        lines.append(f"  {verdict} (fails when the CI's upper bound < {bound}: a drop beyond the tolerated one)")
    for label, ids in (("only in this run", c.only_run), ("only in the baseline", c.only_baseline),
                       ("not judged ok in one run", c.not_ok)):
        if ids:
            shown = ", ".join(ids[:10]) + (f", ... ({len(ids) - 10} more)" if len(ids) > 10 else "")
            lines.append(f"  unpaired, {label}: {len(ids)} ({shown})")
    return lines


def render_terminal(result: GateResult, style=lambda text, **_: text) -> str:
    rows = [("check", "scope", "observed", "limit", "result")]
    for check in result.checks:
        rows.append((check.name, check.scope, _value(check), _limit(check), "pass" if check.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        text = "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        if n and row[4] == "FAIL":
            text = style(text, fg="red")
        lines.append(text)
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    judged = judged_line(result.summary, _noun(result.summary))
    if judged:  # beside the pass rate, so no one ships on a rate over a fraction of the run
        lines += ["", style(f"only {judged} (the pass rate and the means are over the judged ones)", fg="yellow")]
    if result.comparison:
        lines += [""] + comparison_lines(result.comparison)
    verdict = style("PASS", fg="green", bold=True) if result.passed else style("FAIL", fg="red", bold=True)
    lines += ["", f"verdict: {verdict}"]
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: GateResult, *, title: str = "spatialreward gate") -> str:
    icon = "✅" if result.passed else "❌"
    lines = [f"## {icon} {_md(title)}: {'PASS' if result.passed else 'FAIL'}", ""]
    if result.checks:
        lines += ["| check | scope | observed | limit | result |", "|---|---|---|---|---|"]
        for check in result.checks:
            mark = "✅ pass" if check.passed else "❌ FAIL"
            lines.append(f"| {_md(check.name)} | {_md(check.scope)} | {_value(check)} | {_md(_limit(check))} | {mark} |")
        lines.append("")
    if result.comparison:
        lines += ["### Baseline comparison", ""]
        lines += [f"- {_md(line.strip())}" for line in comparison_lines(result.comparison)]
        lines.append("")
    return "\n".join(lines)


def step_outputs(result: GateResult) -> dict[str, str]:
    summary = result.summary
    reward = summary["stats"]["reward"]
    delta = result.comparison.mean_delta if result.comparison else None
    return {
        "verdict": "pass" if result.passed else "fail",
        "mean-reward": "" if reward is None else f"{reward['mean']:.6f}",
        "pass-rate": "" if summary["pass_rate"] is None else f"{summary['pass_rate']:.6f}",
        "errors": str(summary["error"]),
        "delta": "" if delta is None else f"{delta:.6f}",
    }


def annotations(result: GateResult, *, max_warnings: int = 5) -> list[tuple[str, str, str]]:
    """(level, title, message) for each failed check and the worst edits."""
    out = []
    for check in result.checks:
        if not check.passed:
            out.append(("error", f"spatialreward gate: {check.name}",
                        f"{check.name} ({check.scope}) is {_value(check)}, required {_limit(check)}"))
    if result.comparison and result.comparison.regression:
        c = result.comparison
        out.append(("error", "spatialreward gate: regression",
                    f"mean reward change {c.mean_delta:+.4f} vs baseline (CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]): "
                    f"even the CI's upper bound is a larger drop than the tolerated {c.max_drop:g}"))
    for record in result.worst[:max_warnings]:
        out.append(("warning", f"low reward: {record['id']}",
                    f"reward {record['reward']:.3f}: {record.get('instruction')} ({record.get('edited')})"))
    return out
