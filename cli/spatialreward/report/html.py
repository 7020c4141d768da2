"""The self-contained HTML report of a results file.

One pass over the scores file (streamed) gives three things at once:

- the summary of ALL records (``spatialreward.summary``), and a reward
  histogram (fixed bins: constant memory);
- the table's rows, each a *unit* (``results.walk_units``): a single record,
  or a multi-candidate group (the records sharing ``group``, consecutive in
  the file) in rank order, best first, error candidates last. Rows keep only
  what the page shows (long texts truncated, no raw answers). With ``limit``
  only the ``limit`` worst rows are kept, in a bounded heap, so memory does
  not grow with the file;
- the worst records for the Markdown summary (a bounded heap as well).

Default order, "worst first": by reward ascending, a group by its BEST
candidate's reward (a best-of-N group is as good as the candidate it would
ship), and a record or group with no judged candidate (errors only) before
every reward: an edit that could not be judged is the worst outcome. Ties keep
the file's order.

The page: a Jinja2 template (``templates/report/report.html``) with its CSS and
JS inlined, the rows as JSON in a ``<script type="application/json">`` block
(``<``, ``>`` and ``&`` escaped as ``\\u003c``...: no way out of the block), and
thumbnails as ``data:`` URIs. The script renders one page of rows at a time
and never puts record text into HTML (``textContent`` only); a
Content-Security-Policy forbids any network access and any script but its own.

Text-to-image records (``"kind": "t2i"``, protocol ``t2i-spatial``) get their
own row shape (``page_record``: the prompt, the image with the model's object
boxes, each labelled, and the relations' verdicts, which the page shows as a
table: subject, relation, object, model, geometry, agree, decided by) and the
page its own columns and headline metrics (``columns_of``, ``summary.metrics_of``).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import io
import json
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, TextIO

from .. import __version__
from ..aggregate import DIMENSIONS
from ..constants import MAX_SOURCES
from ..numbers import is_number
from ..output import exclusive, replacing
from ..resources import read_template
from ..results import T2I_KIND, is_t2i, read_records, walk_units
from ..summary import MIXED_KIND, STAGES, SummaryBuilder, judged_line, metric_digits, metrics_of
from .thumbnails import THUMBNAIL_SIDE, ThumbnailStore

DEFAULT_IMAGES = 300  # rows (in the default order) that get embedded thumbnails
DEFAULT_WORST = 10  # rows of the Markdown "worst edits" table
HISTOGRAM_BINS = 20

# What the page keeps of long texts (the full texts stay in the scores file).
MAX_INSTRUCTION = 2000
MAX_REASONING = 4000
MAX_MESSAGE = 1000
MAX_LABEL = 200


# -- reading -------------------------------------------------------------------


def _text(value, limit: int) -> str | None:
    if value is None:
        return None
    value = value if isinstance(value, str) else str(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _path(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _sources(value) -> str | list | None:
    """A record's ``source``: one path, or (several sources) the list of them in
    order, at most ``MAX_SOURCES`` (an entry that is not a path becomes None)."""
    if isinstance(value, list):
        paths = [_path(v) for v in value[:MAX_SOURCES]]
        return paths[0] if len(paths) == 1 else (paths or None)
    return _path(value)


def _regions(regions) -> list:
    """[[x1, y1, x2, y2, id, label], ...] clamped to 0..1000; malformed ones skipped."""
    out = []
    for region in regions if isinstance(regions, list) else ():
        if not isinstance(region, dict):
            continue
        box = region.get("bbox_2d")
        if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            continue
        x1, y1, x2, y2 = (min(1000.0, max(0.0, float(v))) for v in box)
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        rid = region.get("id")
        out.append([round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1),
                    rid if isinstance(rid, int) and not isinstance(rid, bool) else len(out),
                    _text(region.get("label"), MAX_LABEL) or ""])
    return out


def _objects(objects) -> tuple[list, list]:
    """A t2i record's objects: boxes as ``_regions`` gives them (id = the
    object's index, label), and the labels of objects without a box."""
    boxed, absent = [], []
    for index, item in enumerate(objects if isinstance(objects, list) else ()):
        if not isinstance(item, dict):
            continue
        label = _text(item.get("label"), MAX_LABEL) or ""
        box = _regions([{"id": index, "label": label, "bbox_2d": item.get("bbox_2d")}])
        if box:
            boxed += box
        else:
            absent.append(label)
    return boxed, absent


def _verdict(value):
    return value if isinstance(value, bool) else None


def _relations(relations) -> list:
    """[[subject, relation, object, model, geometry, agree, decided_by], ...]."""
    out = []
    for item in relations if isinstance(relations, list) else ():
        if not isinstance(item, dict):
            continue
        out.append([_text(item.get(k), MAX_LABEL) or "" for k in ("subject", "relation", "object")]
                   + [_verdict(item.get(k)) for k in ("model", "geometry", "agree")]
                   + [str(item.get("decided_by") or "none")])
    return out


def _t2i_fields(row: dict, record: dict, reasoning: dict) -> None:
    row["k"] = "t2i"
    if record.get("status") != "ok":
        return
    scores = record.get("scores") or {}
    parts = record.get("t2i") if isinstance(record.get("t2i"), dict) else {}
    row.update(r=record["reward"], ts=scores.get("spatial"), tp=scores.get("presence"),
               vf=parts.get("verified_fraction"))
    boxes, absent = _objects(record.get("objects"))
    if boxes:
        row["b"] = boxes
    if absent:
        row["ab"] = absent
    row["rl"] = _relations(record.get("relations"))
    text = _text(reasoning.get("t2i"), MAX_REASONING)
    if text:
        row["rt"] = text


def page_record(record: dict) -> dict:
    """The fields of a record the page shows, under short keys."""
    ok = record.get("status") == "ok"
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    reasoning = record.get("reasoning") if isinstance(record.get("reasoning"), dict) else {}
    size = record.get("edited_size")
    row = {
        "id": str(record.get("id")),
        "st": "ok" if ok else "error",
        "ins": _text(record.get("instruction"), MAX_INSTRUCTION) or "",
        "sp": _sources(record.get("source")),  # a path, or a list of them (several sources)
        "ep": _path(record.get("edited")),
    }
    if is_t2i(record):
        _t2i_fields(row, record, reasoning)
    elif ok:
        scores = record["scores"]
        row.update(r=record["reward"], o=record["overall"], sc=record["sc"], pq=record["pq"],
                   s=[scores[d] for d in DIMENSIONS])
        boxes = _regions(record.get("regions"))
        if boxes:
            row["b"] = boxes
        for key, name in (("rs", "sc"), ("rp", "pq")):
            text = _text(reasoning.get(name), MAX_REASONING)
            if text:
                row[key] = text
    if ok:
        if record.get("repaired"):
            row["rep"] = True
    else:
        row["es"] = str(error.get("stage") or "unknown")
        row["em"] = _text(error.get("message"), MAX_MESSAGE) or ""
        if error.get("origin"):
            row["eo"] = _text(error.get("origin"), 300)
    if isinstance(meta.get("category"), str):
        row["cat"] = meta["category"]
    if record.get("group") is not None:
        row.update(g=str(record["group"]), c=record.get("candidate"), rk=record.get("rank"),
                   gs=record.get("group_size"))
    if isinstance(size, list) and len(size) == 2 and all(is_number(v) and v > 0 for v in size):
        row["sz"] = size
    return row


def worst_record(record: dict) -> dict:
    """What the Markdown table needs of a record, in record format."""
    error = record.get("error") if isinstance(record.get("error"), dict) else None
    return {
        "id": record.get("id"),
        "status": record.get("status"),
        "reward": record.get("reward") if record.get("status") == "ok" else None,
        "instruction": _text(record.get("instruction"), 300),
        **({"kind": T2I_KIND} if is_t2i(record) else {}),
        "error": {"stage": error.get("stage"), "message": _text(error.get("message"), 300)} if error else None,
        "meta": {"category": (record.get("meta") or {}).get("category")} if isinstance(record.get("meta"), dict) else {},
    }


def _rank_order(row: dict):
    rank = row.get("rk")
    return (row["st"] != "ok", rank if is_number(rank) else math.inf, row.get("c") if is_number(row.get("c")) else 0)


def _key(reward, index: int) -> tuple[float, int]:
    """Sort key, ascending = worst first: no reward (errors) before any reward."""
    return (-math.inf if reward is None else float(reward), index)


class _Worst:
    """The ``n`` smallest items by key, seen one at a time (a bounded max-heap);
    ``n`` None keeps everything."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self._heap: list = []

    def add(self, key: tuple[float, int], item) -> None:
        if self.n is None:
            self._heap.append((key, item))
            return
        if self.n <= 0:
            return
        entry = ((-key[0], -key[1]), item)  # keys are unique (index), items never compared
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def sorted(self) -> list:
        if self.n is None:
            return [item for _, item in sorted(self._heap, key=lambda e: e[0])]
        return [item for _, item in sorted(self._heap, key=lambda e: (-e[0][0], -e[0][1]))]


@dataclass
class ReportData:
    """Everything the HTML page and the Markdown summary show."""

    summary: dict
    units: list[list[dict]]  # table rows in the default order; each a list of page records
    units_total: int  # rows before --limit
    records_total: int
    groups_total: int
    histogram: list[int]
    worst: list[dict] = field(default_factory=list)  # worst records (record format), for Markdown
    limit: int | None = None


def collect(records: Iterable[dict], *, threshold: float, limit: int | None = None,
            worst: int = DEFAULT_WORST) -> ReportData:
    """One pass over ``records`` (valid records, as ``results.read_records``
    gives them): summary, histogram, rows (the ``limit`` worst when given) and
    the ``worst`` worst records."""
    builder = SummaryBuilder(threshold)
    histogram = [0] * HISTOGRAM_BINS
    units = _Worst(limit)
    worst_records = _Worst(worst)
    number = units_total = groups_total = 0
    for unit in walk_units(records):
        members = []
        for record in unit:
            number += 1
            builder.add(record)
            ok = record.get("status") == "ok"
            if ok:
                histogram[min(HISTOGRAM_BINS - 1, max(0, int(record["reward"] * HISTOGRAM_BINS)))] += 1
            worst_records.add(_key(record["reward"] if ok else None, number), worst_record(record))
            members.append(page_record(record))
        members.sort(key=_rank_order)
        best = members[0].get("r")  # rank order: the best candidate first, errors last
        units.add(_key(best, units_total), members)
        units_total += 1
        groups_total += unit.group is not None
    return ReportData(
        summary=builder.result(),
        units=units.sorted(),
        units_total=units_total,
        records_total=number,
        groups_total=groups_total,
        histogram=histogram,
        worst=worst_records.sorted(),
        limit=limit,
    )


def read_report_data(records_path: Path | str, *, threshold: float, limit: int | None = None,
                     worst: int = DEFAULT_WORST) -> ReportData:
    """``collect`` over a scores file (``ScoresFileError`` if it is missing or bad)."""
    return collect(read_records(records_path), threshold=threshold, limit=limit, worst=worst)


# -- thumbnails ----------------------------------------------------------------


def attach_thumbnails(units: list[list[dict]], images: int, store: ThumbnailStore) -> None:
    """Give the first rows (a group whole) thumbnails, until ``images`` records
    have them: sets ``si``/``ei`` (image keys from ``store``, one per distinct
    path, or None for a record without a path; ``si`` a list of keys for a
    record with several sources) on those records."""
    given = 0
    for members in units:
        if given >= images:
            break
        for row in members:
            sources = row.get("sp")
            if isinstance(sources, list):
                row["si"] = [store.key(path) if path else None for path in sources]
            else:
                row["si"] = store.key(sources) if sources else None
            row["ei"] = store.key(row["ep"]) if row.get("ep") else None
            given += 1


# -- page ----------------------------------------------------------------------


def histogram_svg(counts: list[int], threshold: float) -> str:
    """An inline SVG bar chart of reward counts over [0, 1] with the threshold
    marked. Only numbers go into it."""
    width, height, left, bottom, top = 460, 180, 34, 24, 22
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max(counts) if counts and max(counts) > 0 else 1
    bins = len(counts)
    bar_w = plot_w / bins
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" role="img" aria-label="Histogram of rewards">']
    for tick in (0, peak // 2, peak) if peak > 1 else (0, peak):
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="ylab" x="{left - 5}" y="{y + 3.5:.1f}" text-anchor="end">{tick}</text>')
    for i, count in enumerate(counts):
        lo, hi = i / bins, (i + 1) / bins
        h = plot_h * count / peak
        cls = "bar pass" if lo >= threshold else ("bar fail" if hi <= threshold else "bar mixed")
        parts.append(
            f'<rect class="{cls}" x="{left + i * bar_w + 1:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}"><title>{lo:.2f}–{hi:.2f}: {count}</title></rect>'
        )
    parts.append(f'<line class="axis" x1="{left}" x2="{width - 8}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * tick
        parts.append(f'<text class="xlab" x="{x:.1f}" y="{height - 6}" text-anchor="middle">{tick:g}</text>')
    x = left + plot_w * threshold
    parts.append(f'<line class="thr" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 18}" y2="{top + plot_h}"/>')
    anchor = "end" if threshold > 0.8 else "start"
    dx = -4 if anchor == "end" else 4
    parts.append(f'<text class="thrlab" x="{x + dx:.1f}" y="{top - 8}" text-anchor="{anchor}">threshold {threshold:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


_SCRIPT_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def script_escape(text: str) -> str:
    """JSON text made safe inside a ``<script type="application/json">``
    element: ``<``, ``>`` and ``&`` (and the JS line separators) as ``\\uXXXX``
    escapes (valid JSON, the same value), so no ``</script>`` or ``<!--`` can
    appear. Per character: pieces of a JSON text can be escaped one by one."""
    for char, escape in _SCRIPT_ESCAPES:
        text = text.replace(char, escape)
    return text


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def script_json(data) -> str:
    """``data`` as JSON safe inside a ``<script type="application/json">`` element."""
    return script_escape(_dumps(data))


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# The table's numeric columns: key (sort key, cell class), label, title,
# digits, the row field holding the value (and its index in a list), raw (a
# 0..25 score: narrower).
_EDIT_COLUMNS = [
    {"key": "reward", "label": "reward", "title": "reward 0..1", "digits": 3, "f": "r"},
    {"key": "overall", "label": "overall", "title": "overall 0..10", "digits": 2, "f": "o"},
    {"key": "sc", "label": "SC", "title": "semantic consistency 0..10", "digits": 2, "f": "sc"},
    {"key": "pq", "label": "PQ", "title": "perceptual quality 0..10", "digits": 2, "f": "pq"},
] + [{"key": dim, "label": label, "title": title, "digits": 1, "f": "s", "i": index, "raw": True}
     for index, (dim, label, title) in enumerate((
         ("success", "success", "raw 0..25"),
         ("overediting", "over\u00adediting", "raw 0..25, 25 = minimal edit"),
         ("naturalness", "natural\u00adness", "raw 0..25"),
         ("artifacts", "arti\u00adfacts", "raw 0..25, 25 = none")))]
_T2I_COLUMNS = [
    {"key": "spatial", "label": "spatial", "title": "spatial correctness, raw 0..25", "digits": 1, "f": "ts", "raw": True},
    {"key": "presence", "label": "presence", "title": "object presence, raw 0..25", "digits": 1, "f": "tp", "raw": True},
    {"key": "verified_fraction", "label": "verified", "digits": 3, "f": "vf",
     "title": "share of the relations decided by the boxes' geometry that hold (0..1; – when none was decidable)"},
]


def columns_of(kind: str) -> list[dict]:
    """The table's numeric columns for a summary of ``kind`` (edit, t2i, mixed)."""
    if kind == T2I_KIND:
        columns = _EDIT_COLUMNS[:1] + _T2I_COLUMNS
    elif kind == MIXED_KIND:
        columns = _EDIT_COLUMNS + _T2I_COLUMNS
    else:
        columns = _EDIT_COLUMNS
    return [{"raw": False, "i": None, **column} for column in columns]


_NOUNS = {T2I_KIND: ("image", "images"), MIXED_KIND: ("record", "records")}


def _relations_context(relations: dict | None) -> dict | None:
    if not relations:
        return None
    decided = relations.get("decided_by") or {}
    rate = relations.get("agreement_rate")
    return {
        "judged": relations.get("judged", 0),
        "geometry": decided.get("geometry", 0), "model": decided.get("model", 0), "none": decided.get("none", 0),
        "compared": relations.get("compared", 0), "agreed": relations.get("agreed", 0),
        "agreement": "–" if rate is None else f"{rate:.1%}",
    }


def _header_context(data: ReportData, *, title: str, source: str, images: int, image_count: int) -> dict:
    summary = data.summary
    stats = summary["stats"]
    kind = summary.get("kind", "edit")
    metrics = []
    for metric in metrics_of(kind):
        s = stats.get(metric)
        digits = metric_digits(metric)
        metrics.append({
            "name": metric,
            "values": [_fmt(s and s[k], digits) for k in ("mean", "median", "p10", "p90", "min", "max")],
        })
    errors = summary["errors_by_stage"]
    stages = [(stage, errors.get(stage, 0)) for stage in STAGES] + sorted(
        (s, n) for s, n in errors.items() if s not in STAGES)
    categories = []
    for name, cat in (summary.get("categories") or {}).items():
        reward = cat["stats"].get("reward")
        categories.append({
            "name": name, "total": cat["total"], "ok": cat["ok"], "error": cat["error"],
            "mean": _fmt(reward and reward["mean"], 3), "median": _fmt(reward and reward["median"], 3),
            "pass_rate": "–" if cat["pass_rate"] is None else f"{cat['pass_rate']:.1%}",
        })
    reward = stats.get("reward")
    return {
        "title": title,
        "source": source,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "summary": summary,
        "threshold": f"{summary['threshold']:g}",
        "pass_rate": "–" if summary["pass_rate"] is None else f"{summary['pass_rate']:.1%}",
        "judged": judged_line(summary, _NOUNS.get(kind, ("edit", "edits"))[1]),
        "reward": {k: _fmt(reward and reward[k], 3) for k in ("mean", "median", "p10", "p90")},
        "metrics": metrics,
        "stages": stages,
        "categories": categories,
        "config_hash": summary.get("config_hash"),
        "units_total": data.units_total,
        "units_shown": len(data.units),
        "groups_total": data.groups_total,
        "limit": data.limit,
        "images": images,
        "image_count": image_count,
        "kind": kind,
        "noun": _NOUNS.get(kind, ("edit", "edits")),
        "columns": columns_of(kind),
        "relations": _relations_context(summary.get("relations")),
        "kinds": summary.get("kinds"),
    }


def write_page(handle: TextIO, data: ReportData, *, title: str, source: str, images: int = DEFAULT_IMAGES,
               thumbnail_side: int = THUMBNAIL_SIDE, workers: int | None = None) -> None:
    """Write the report page to the text ``handle``. Streams: the rows' JSON is
    written a batch of rows at a time and each thumbnail as soon as it is made,
    so the page is never held in memory whole. Adds image keys to ``data.units``."""
    import jinja2
    from markupsafe import Markup

    store = ThumbnailStore(side=thumbnail_side)
    attach_thumbnails(data.units, images, store)
    nonce = secrets.token_hex(16)  # markers no title or category can contain
    data_mark, images_mark = f"@@data-{nonce}@@", f"@@images-{nonce}@@"
    css = read_template("report/report.css")
    js = read_template("report/report.js")
    script_hash = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(read_template("report/report.html"))
    context = _header_context(data, title=title, source=source, images=images, image_count=len(store))
    page = template.render(
        **context,
        css=Markup(css),
        js=Markup(js),
        script_hash=script_hash,
        data_json=Markup(data_mark),
        images_json=Markup(images_mark),
        histogram=Markup(histogram_svg(data.histogram, data.summary["threshold"])),
    )
    head, rest = page.split(data_mark)
    middle, tail = rest.split(images_mark)
    handle.write(head)
    meta = {
        "kind": context["kind"],
        "columns": context["columns"],
        "threshold": data.summary["threshold"],
        "imagesFlag": images,
        "unitsTotal": data.units_total,
        "limit": data.limit,
        "summary": data.summary,
    }
    handle.write(script_escape(_dumps(meta)[:-1] + ',"units":['))
    for start in range(0, len(data.units), 256):
        chunk = _dumps(data.units[start:start + 256])[1:-1]
        handle.write(("," if start else "") + script_escape(chunk))
    handle.write("]}")
    handle.write(middle)
    handle.write("{")
    for index, (key, thumb) in enumerate(store.iter_build(workers)):
        handle.write(("," if index else "") + script_escape(f"{_dumps(key)}:{_dumps(thumb)}"))
    handle.write("}")
    handle.write(tail)


def render_html(data: ReportData, **kwargs) -> str:
    """The report page as one string (``write_page``'s keyword arguments)."""
    buffer = io.StringIO()
    write_page(buffer, data, **kwargs)
    return buffer.getvalue()


def _write_atomic(path: Path, write) -> None:
    """``write(handle)`` into a temporary file next to ``path``, then rename it
    over ``path``: a failed or interrupted run leaves no half-written report."""
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as handle:
        write(handle)


def write_html_report(records_path: Path | str, out_path: Path | str, *, threshold: float = 0.5,
                      limit: int | None = None, images: int = DEFAULT_IMAGES, title: str | None = None,
                      markdown_path: Path | str | None = None, markdown_worst: int = DEFAULT_WORST,
                      thumbnail_side: int = THUMBNAIL_SIDE, workers: int | None = None) -> ReportData:
    """Write the HTML report of the scores file ``records_path`` to
    ``out_path`` (and the Markdown summary to ``markdown_path`` when given).

    ``threshold``: pass threshold on the reward; ``limit``: keep only that many
    rows in the table (the worst; a group is one row), the summary still covers
    every record; ``images``: embed thumbnails for the first rows in the default
    order until that many records have them. Returns the collected data."""
    from .markdown import render_markdown

    records_path = Path(records_path)
    data = read_report_data(records_path, threshold=threshold, limit=limit, worst=markdown_worst)
    title = title or f"SpatialReward report: {records_path.name}"
    with exclusive(("-o", out_path), ("--markdown", markdown_path)):  # re-entered under `spatialreward report`
        _write_atomic(Path(out_path), lambda handle: write_page(
            handle, data, title=title, source=str(records_path), images=images,
            thumbnail_side=thumbnail_side, workers=workers))
        if markdown_path is not None:
            text = render_markdown(data.summary, data.worst, title=title, source=records_path.name)
            _write_atomic(Path(markdown_path), lambda handle: handle.write(text))
    return data
