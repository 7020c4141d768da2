"""Human-readable renderings of one record: reasoning with region references,
and the terminal verdict printed by ``spatialreward check``."""

from __future__ import annotations

import re

_MARKER = re.compile(r"<\|bbox_(\d+)\|>|<\|global\|>")


def readable_reasoning(text: str | None, regions: list[dict] | None) -> str:
    """Replace ``<|bbox_N|>`` by ``[region N: label]`` and ``<|global|>`` by ``Overall:``."""
    if not text:
        return ""
    labels = {r.get("id"): r.get("label", "") for r in regions or []}

    def sub(match: re.Match) -> str:
        if match.group(1) is None:
            return "Overall:"
        rid = int(match.group(1))
        label = labels.get(rid)
        return f"[region {rid}: {label}]" if label else f"[region {rid}]"

    return re.sub(r"[ \t]+", " ", _MARKER.sub(sub, text)).strip()


def verdict_lines(record: dict, threshold: float, *, style=lambda text, **_: text) -> list[str]:
    """The verdict of one record as lines of text; ``style`` may colour them
    (``click.style``)."""
    lines = [f"instruction: {record.get('instruction')}"]
    if record.get("status") != "ok":
        error = record.get("error") or {}
        lines.append(style(f"ERROR ({error.get('stage')}): {error.get('message')}", fg="red", bold=True))
        return lines
    reward = record["reward"]
    passed = reward >= threshold
    mark = style("PASS", fg="green", bold=True) if passed else style("FAIL", fg="red", bold=True)
    lines.append(f"reward {reward:.3f}  {mark}  (threshold {threshold:g})")
    scores = record["scores"]
    lines.append(
        f"SC {record['sc']:.2f}/10  success {scores['success']:g}/25  over-editing {scores['overediting']:g}/25"
        + ("  (repaired)" if record.get("repaired") else "")
    )
    lines.append(f"PQ {record['pq']:.2f}/10  naturalness {scores['naturalness']:g}/25  artifacts {scores['artifacts']:g}/25")
    regions = record.get("regions") or []
    if regions:
        lines.append("edit regions (pixels of the edited image):")
        for region in regions:
            x1, y1, x2, y2 = region["bbox_px"] or region["bbox_2d"]
            lines.append(f"  [{region['id']}] {region['label']}: ({x1}, {y1}) - ({x2}, {y2})")
    else:
        lines.append("edit regions: none (the model saw no edit)")
    reasoning = record.get("reasoning") or {}
    lines.append("SC reasoning: " + readable_reasoning(reasoning.get("sc"), regions))
    lines.append("PQ reasoning: " + readable_reasoning(reasoning.get("pq"), regions))
    return lines
