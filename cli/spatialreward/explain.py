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


def _yes_no(value) -> str:
    return "yes" if value is True else "no" if value is False else "-"


def _head(record: dict, what: str, threshold: float, style) -> list[str]:
    """A verdict's first lines: its instruction or prompt (``what``), then its
    error, or its reward with PASS/FAIL at ``threshold``."""
    lines = [f"{what}: {record.get('instruction')}"]
    if record.get("status") != "ok":
        error = record.get("error") or {}
        lines.append(style(f"ERROR ({error.get('stage')}): {error.get('message')}", fg="red", bold=True))
        return lines
    reward = record["reward"]
    mark = style("PASS", fg="green", bold=True) if reward >= threshold else style("FAIL", fg="red", bold=True)
    lines.append(f"reward {reward:.3f}  {mark}  (threshold {threshold:g})")
    return lines


def t2i_verdict_lines(record: dict, threshold: float, *, style=lambda text, **_: text) -> list[str]:
    """The verdict of a text-to-image record (``"kind": "t2i"``): the prompt,
    the reward, the raw scores, the objects found (pixel boxes) and each
    relation's verdicts (the model's, the geometry's, who decided)."""
    lines = _head(record, "prompt", threshold, style)
    if record.get("status") != "ok":
        return lines
    scores = record.get("scores") or {}
    parts = record.get("t2i") or {}
    fraction = parts.get("verified_fraction")
    lines.append(f"spatial {scores.get('spatial', 0):g}/25  presence {scores.get('presence', 0):g}/25  "
                 f"verified {'-' if fraction is None else f'{fraction:.2f}'} "
                 f"({parts.get('holding', 0)} of {parts.get('decidable', 0)} decidable relations hold)"
                 + ("  (repaired)" if record.get("repaired") else ""))
    objects = [o for o in record.get("objects") or [] if isinstance(o, dict)]
    if objects:
        lines.append("objects (pixels of the image):")
        for obj in objects:
            box = obj.get("bbox_px") or obj.get("bbox_2d")
            where = f"({box[0]}, {box[1]}) - ({box[2]}, {box[3]})" if isinstance(box, list) and len(box) == 4 else "not found"
            lines.append(f"  {obj.get('label')}: {where}")
    else:
        lines.append("objects: none found")
    relations = [r for r in record.get("relations") or [] if isinstance(r, dict)]
    if relations:
        lines.append("relations (model / geometry / decided by):")
        for rel in relations:
            lines.append(f"  {rel.get('subject')} {rel.get('relation')} {rel.get('object')}: "
                         f"{_yes_no(rel.get('model'))} / {_yes_no(rel.get('geometry'))} / {rel.get('decided_by')}")
    else:
        lines.append("relations: none")
    lines.append("reasoning: " + ((record.get("reasoning") or {}).get("t2i") or "").strip())
    return lines


def verdict_lines(record: dict, threshold: float, *, style=lambda text, **_: text) -> list[str]:
    """The verdict of one record as lines of text; ``style`` may colour them
    (``click.style``). A text-to-image record: ``t2i_verdict_lines``."""
    if record.get("kind") == "t2i":
        return t2i_verdict_lines(record, threshold, style=style)
    lines = _head(record, "instruction", threshold, style)
    if record.get("status") != "ok":
        return lines
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
