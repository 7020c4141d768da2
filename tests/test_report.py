"""`spatialreward report`: the HTML page (data, escaping, self-containment,
--limit, --images, thumbnails), the Markdown summary, and the command."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import read_jsonl, run_cli, write_jsonl
from report_fixtures import DIMS, REGIONS_TOTAL, XSS, crafted_records, err, ok

from spatialreward.commands import main
from spatialreward.report import collect, md_escape, render_markdown, write_html_report
from spatialreward.report.thumbnails import ThumbnailStore, make_thumbnail
from spatialreward.summary import summarize

DEFAULT_ORDER = ["bad-input", "boom", "garbled", "gone", "mirror", "xss", "bw", "red", "noregion"]


@pytest.fixture(scope="module")
def scores(photos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return write_jsonl(root / "scores.jsonl", crafted_records(photos, root))


def page_data(html: str) -> dict:
    """The page's data block, with its image table (another block) as "images"."""
    blocks = {}
    for name in ("data", "images"):
        match = re.search(rf'<script type="application/json" id="report-{name}">(.*?)</script>', html, re.S)
        assert match, f"no {name} block"
        blocks[name] = json.loads(match.group(1))
    return {**blocks["data"], "images": blocks["images"]}


def unit_ids(data: dict) -> list[str]:
    return [m[0]["g"] if m[0].get("g") is not None else m[0]["id"] for m in data["units"]]


def worst_rows(markdown: str) -> list[str]:
    table = markdown.split("**Worst edits**", 1)[1]
    return [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]


def build(scores: Path, tmp_path: Path, **kwargs) -> tuple[str, dict]:
    out = tmp_path / "report.html"
    write_html_report(scores, out, **{"threshold": 0.5, **kwargs})
    html = out.read_text(encoding="utf-8")
    return html, page_data(html)


# -- the page ------------------------------------------------------------------


def test_rows_are_groups_and_singles_worst_first(scores, tmp_path):
    html, data = build(scores, tmp_path)
    assert unit_ids(data) == DEFAULT_ORDER
    group = data["units"][DEFAULT_ORDER.index("bw")]
    assert [r["id"] for r in group] == ["bw#0", "bw#1", "bw#2"]  # rank order, the error last
    assert [r.get("rk") for r in group] == [1, 2, None]
    assert data["unitsTotal"] == 9 and data["threshold"] == 0.5
    records = {r["id"]: r for unit in data["units"] for r in unit}
    assert len(records) == 11
    mirror = records["mirror"]
    assert mirror["r"] == 0.41 and mirror["s"] == [20, 15, 22, 18] and mirror["sz"] == [300, 512]
    assert mirror["b"] == [[0, 0, 1000, 1000, 0, "whole image"], [200, 50, 800, 400, 1, "helmet"]]
    assert records["boom"]["es"] == "model" and records["boom"]["em"] == "CUDA out of memory"
    assert {records[i]["es"] for i in ("bad-input", "boom", "garbled", "bw#2")} == {"input", "model", "parse"}
    assert sum(len(r.get("b", [])) for r in records.values()) == REGIONS_TOTAL
    assert "raw" not in json.dumps(data["units"])  # raw answers are not carried into the page


def test_page_is_self_contained(scores, tmp_path):
    html, _ = build(scores, tmp_path)
    assert not re.search(r"https?://", html)
    for attr in re.findall(r"""\b(?:src|href|srcset|action)\s*=\s*["']?([^"'\s>]*)""", html, re.I):
        assert not attr.startswith("//") and "://" not in attr
    assert "@import" not in html and "url(" not in html
    assert html.count("<script") == 3 and html.count("</script>") == 3  # two data blocks and the inline script
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp  # only this exact script may run


def test_untrusted_text_is_escaped(scores, tmp_path):
    html, data = build(scores, tmp_path, title="<b>Batch</b> & co")
    assert "<script>alert" not in html and "</script><b>" not in html and "<img src=x" not in html
    assert "<b>Batch</b>" not in html and "&lt;b&gt;Batch&lt;/b&gt; &amp; co" in html
    records = {r["id"]: r for unit in data["units"] for r in unit}
    assert records["xss"]["ins"] == XSS  # intact once decoded: the page shows it as text
    assert records["xss"]["b"][0][5] == "</script><b>label</b>"
    assert "</script><script>alert(3)" in records["xss"]["rs"]


def test_thumbnails_embedded_once_per_path(scores, tmp_path, photos):
    html, data = build(scores, tmp_path)
    images = data["images"]
    paths = {r[k]: r.get(k2) for unit in data["units"] for r in unit
             for k, k2 in (("sp", "si"), ("ep", "ei")) if r.get(k)}
    assert len(images) == len(paths)  # one entry per distinct path...
    assert len(set(paths.values())) == len(paths)
    assert html.count("data:image/jpeg;base64,") == sum("u" in v for v in images.values())  # ...embedded once
    coffee_key = paths[str(photos["coffee"])]
    assert images[coffee_key]["w"] == 192 and images[coffee_key]["h"] == 128  # 600x400 -> longest side 192
    astronaut = images[paths[str(photos["astronaut"])]]
    assert astronaut["h"] == 192 and abs(astronaut["w"] - 300 * 192 / 512) <= 1
    thumb = Image.open(io.BytesIO(base64.b64decode(images[coffee_key]["u"].split(",", 1)[1])))
    assert thumb.format == "JPEG" and thumb.size == (192, 128)
    missing = next(r for unit in data["units"] for r in unit if r["id"] == "gone")
    assert images[missing["ei"]] == {"x": "file not found"}


def test_unreadable_images_are_placeholders(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert make_thumbnail(bad).uri is None and "readable" in make_thumbnail(bad).reason
    assert make_thumbnail(empty).uri is None
    assert make_thumbnail(tmp_path / "nope.png").reason == "file not found"
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (40, 10), (255, 0, 0, 0)).save(rgba)
    thumb = make_thumbnail(rgba)
    assert (thumb.width, thumb.height) == (40, 10)  # never upscaled
    store = ThumbnailStore()
    assert store.key(str(bad)) == store.key(str(bad)) != store.key(str(rgba))
    assert set(store.build()) == {"i0", "i1"}


def test_images_flag_limits_the_embedded_thumbnails(scores, tmp_path):
    html, data = build(scores, tmp_path, images=0)
    assert data["images"] == {} and "data:image" not in html
    assert all("si" not in r and "ei" not in r for unit in data["units"] for r in unit)
    _, data = build(scores, tmp_path, images=2)
    flagged = [r["id"] for unit in data["units"] for r in unit if "ei" in r]
    assert flagged == ["bad-input", "boom"]  # the first two of the default order
    # a group is never split: it gets thumbnails whole once it starts within the budget
    _, data = build(scores, tmp_path, images=7)
    flagged = [r["id"] for unit in data["units"] for r in unit if "ei" in r]
    assert flagged == ["bad-input", "boom", "garbled", "gone", "mirror", "xss", "bw#0", "bw#1", "bw#2"]


def test_limit_keeps_the_worst_rows_and_the_summary_covers_all(scores, tmp_path):
    html, data = build(scores, tmp_path, limit=5)
    assert unit_ids(data) == DEFAULT_ORDER[:5]
    assert data["unitsTotal"] == 9 and data["limit"] == 5
    assert data["summary"]["total"] == 11 and data["summary"]["ok"] == 7
    assert "The 5 worst of 9 rows" in html
    summary = summarize(read_jsonl(scores), 0.5)
    assert data["summary"] == json.loads(json.dumps(summary))
    _, data = build(scores, tmp_path, limit=7)
    assert unit_ids(data) == DEFAULT_ORDER[:7]  # the group by its best candidate (0.62)


def test_summary_counts_and_histogram_in_the_header(scores, tmp_path):
    html, data = build(scores, tmp_path, threshold=0.6)
    assert data["summary"]["threshold"] == 0.6
    assert ">57.1%<" not in html and ">42.9%<" in html  # 3 of 7 at >= 0.6
    assert re.search(r'id="n-total">11<', html)
    assert "<svg" in html and html.count('class="bar ') == 20
    counts = [int(n) for n in re.findall(r"<title>[0-9.]+–[0-9.]+: (\d+)</title>", html)]
    assert sum(counts) == 7


def test_group_sort_uses_the_best_candidate_and_errors_sort_first():
    rows = [
        ok("a", 0.5, "s", "e"),
        ok("g#0", 0.9, "s", "e", group=("g", 2, 0, 1)), ok("g#1", 0.1, "s", "e", group=("g", 2, 1, 2)),
        err("x", "parse", "bad"),
        ok("b", 0.05, "s", "e"),
        err("h#0", "model", "m", group=("h", 2, 0)), err("h#1", "model", "m", group=("h", 2, 1)),
    ]
    data = collect(iter(rows), threshold=0.5)
    assert [m[0].get("g") or m[0]["id"] for m in data.units] == ["x", "h", "b", "a", "g"]
    assert data.groups_total == 2 and data.units_total == 5 and data.records_total == 7
    assert [r["id"] for r in data.worst] == ["x", "h#0", "h#1", "b", "g#1", "a", "g#0"]


def test_limit_selection_is_bounded_and_streams():
    """Worst-N over 30,000 records: only N rows are kept (a bounded heap)."""
    n = 30_000

    def records():
        for i in range(n):
            reward = ((i * 7919) % n) / n
            yield ok(f"e{i}", reward, f"/img/s{i}.png", f"/img/e{i}.png", instruction="x" * 300,
                     regions=[("thing", (1, 2, 3, 4))], reasoning={"sc": "y" * 1000, "pq": "z" * 1000})

    tracemalloc.start()
    data = collect(records(), threshold=0.5, limit=25, worst=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(data.units) == 25 and data.units_total == n and data.summary["total"] == n
    assert [m[0]["r"] for m in data.units] == sorted(m[0]["r"] for m in data.units)
    assert data.units[0][0]["r"] == 0.0 and data.units[-1][0]["r"] == pytest.approx(24 / n)
    assert [r["reward"] for r in data.worst] == [i / n for i in range(5)]
    # the summary keeps 8 floats per record (~2 MB here); 30,000 page rows would be ~100 MB
    assert peak < 12e6, f"peak {peak / 1e6:.1f} MB"


def test_long_texts_are_truncated_in_the_page(tmp_path):
    rows = [ok("long", 0.5, "s", "e", instruction="i" * 10_000, reasoning={"sc": "r" * 20_000, "pq": "p"})]
    data = collect(iter(rows), threshold=0.5)
    row = data.units[0][0]
    assert len(row["ins"]) == 2000 and row["ins"].endswith("…") and len(row["rs"]) == 4000


def test_malformed_regions_are_skipped_and_boxes_clamped():
    rows = [ok("r", 0.5, "s", "e", regions=[("fine", (0, 0, 10, 10))])]
    rows[0]["regions"] += [{"id": 7, "label": "bad", "bbox_2d": [1, 2]}, "junk",
                           {"id": 8, "label": 5, "bbox_2d": [900, 900, 1200, -5]}]
    data = collect(iter(rows), threshold=0.5)
    assert data.units[0][0]["b"] == [[0, 0, 10, 10, 0, "fine"], [900, 0, 1000, 900, 8, "5"]]


# -- Markdown ------------------------------------------------------------------


def test_markdown_numbers_equal_the_summary(scores):
    summary = summarize(read_jsonl(scores), 0.5)
    data = collect(iter(read_jsonl(scores)), threshold=0.5, worst=6)
    text = render_markdown(summary, data.worst, title="Nightly | run")
    assert text.startswith("# Nightly \\| run\n")
    assert "**11 edits**: 7 ok, 4 error (input 1, model 1, parse 2), 0 repaired" in text
    assert f"**{summary['pass_rate']:.1%}** (4/7 judged edits)" in text
    for metric, digits in (("reward", 3), ("overall", 2), ("sc", 2), ("pq", 2), *((d, 2) for d in DIMS)):
        s = summary["stats"][metric]
        row = f"| {metric} | " + " | ".join(f"{s[k]:.{digits}f}" for k in ("mean", "median", "p10", "p90")) + " |"
        assert row in text
    assert "| input | 1 |" in text and "| model | 1 |" in text and "| parse | 2 |" in text
    cat = summary["categories"]["global"]
    assert (f"| global | {cat['total']} | {cat['ok']} | {cat['error']} | {cat['stats']['reward']['mean']:.3f} | "
            f"{cat['pass_rate']:.1%} |") in text
    worst = worst_rows(text)
    assert len(worst) == 6
    assert worst[0].startswith("| 1 | bw#2 | – |") and "error (parse)" in worst[0]
    assert worst[4].startswith("| 5 | bw#1 | 0.200 |")


def test_markdown_escapes_table_cells(scores):
    summary = summarize(read_jsonl(scores), 0.5)
    records = [{"id": "a|b", "status": "ok", "reward": 0.1, "instruction": XSS + "\nsecond line"},
               {"id": "e", "status": "error", "reward": None, "instruction": "x",
                "error": {"stage": "parse", "message": "bad | very\nbad"}}]
    text = render_markdown(summary, records)
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 6  # five cells: no pipe leaked
    assert "<script>" not in text and "\\<script\\>alert(1)\\</script\\>" in text
    assert "a\\|b" in rows[0] and "second line" in rows[0]
    assert "bad \\| very bad" in rows[1]
    assert md_escape("*x* _y_ [z](u) `c` ~s~ a&b") == "\\*x\\* \\_y\\_ \\[z\\](u) \\`c\\` \\~s\\~ a&amp;b"
    assert md_escape("abcdefghij", 5) == "abcd…"


def test_markdown_without_judged_edits_or_categories():
    summary = summarize([err("e", "input", "gone")], 0.5)
    text = render_markdown(summary, [])
    assert "– (no judged edits)" in text and "| reward | – | – | – | – |" in text
    assert "By category" not in text and "Worst edits" not in text


def test_a_record_with_several_sources_shows_them_all(photos, tmp_path):
    """``source`` a list (a multi-reference edit): every source in order, a
    thumbnail each (a path shared with another row embedded once); a list
    that is not all paths or is too long never breaks the page."""
    gone = tmp_path / "gone.png"
    sources = [photos["coffee"], photos["astronaut"], gone]
    multi = ok("multi", 0.3, photos["coffee"], photos["coffee_red_square"], regions=[("square", (1, 2, 3, 4))])
    multi["source"] = [str(p) for p in sources]
    odd = err("odd", "input", "bad", photos["coffee"], photos["coffee_blur"])
    odd["source"] = [str(photos["coffee"]), 7, None] + [str(photos["coffee"])] * 20
    listed_one = ok("one", 0.9, photos["coffee"], photos["coffee_gray"])
    listed_one["source"] = [str(photos["coffee"])]
    scores = write_jsonl(tmp_path / "scores.jsonl", [
        multi, odd, listed_one, ok("single", 0.8, photos["coffee"], photos["coffee_blur"])])
    html, data = build(scores, tmp_path)
    rows = {r["id"]: r for unit in data["units"] for r in unit}
    assert rows["multi"]["sp"] == [str(p) for p in sources] and len(rows["multi"]["si"]) == 3
    assert rows["single"]["sp"] == str(photos["coffee"]) and rows["single"]["si"] == rows["multi"]["si"][0]
    assert rows["one"]["sp"] == str(photos["coffee"])  # a one-element list is one source
    images = data["images"]
    coffee, astronaut, missing = (images[k] for k in rows["multi"]["si"])
    assert (coffee["w"], coffee["h"]) == (192, 128) and astronaut["h"] == 192 and missing == {"x": "file not found"}
    assert rows["odd"]["sp"][:3] == [str(photos["coffee"]), None, None] and len(rows["odd"]["sp"]) == 8
    assert rows["odd"]["si"][1] is None
    assert html.count("data:image/jpeg;base64,") == sum("u" in v for v in images.values())
    assert "Array.isArray(r.sp)" in html  # the page's script draws a list of sources
    summary = summarize(read_jsonl(scores), 0.5)
    assert "| multi |" in render_markdown(summary, read_jsonl(scores))
    result = CliRunner().invoke(main, ["report", str(scores), "-o", str(tmp_path / "r.html"),
                                       "--markdown", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output


# -- the command ---------------------------------------------------------------


def test_command_writes_html_and_markdown(scores, tmp_path):
    out, md = tmp_path / "sub" / "r.html", tmp_path / "s.md"
    result = CliRunner().invoke(main, ["report", str(scores), "-o", str(out), "--markdown", str(md),
                                       "--limit", "4", "--images", "3", "--worst", "3", "--title", "T"])
    assert result.exit_code == 0, result.output
    data = page_data(out.read_text(encoding="utf-8"))
    assert unit_ids(data) == DEFAULT_ORDER[:4]
    assert sum("ei" in r for unit in data["units"] for r in unit) == 3
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# T\n") and "**11 edits**" in text
    assert [row.split(" | ")[1] for row in worst_rows(text)] == ["bw#2", "bad-input", "boom"]
    assert "4 of 9 rows" in result.output


@pytest.mark.parametrize("args, code, message", [
    (["missing.jsonl"], 3, "no such file"),
    (["bad.jsonl"], 3, "invalid JSON"),
    (["notrecord.jsonl"], 3, "bad:"),
    (["scores", "--threshold", "1.5"], 2, "threshold"),
    (["scores", "--limit", "0"], 2, "--limit"),
    (["scores", "--images", "-1"], 2, "--images"),
])
def test_command_errors(scores, tmp_path, args, code, message):
    write_jsonl(tmp_path / "bad.jsonl", ['{"id": "a", "status": "ok"', "{}"])
    write_jsonl(tmp_path / "notrecord.jsonl", [{"id": "a", "status": "ok", "reward": 0.5, "overall": 5, "sc": 5,
                                                "pq": 5, "scores": {"success": 1}}])
    target = str(scores) if args[0] == "scores" else str(tmp_path / args[0])
    result = CliRunner().invoke(main, ["report", target, "-o", str(tmp_path / "r.html"), *args[1:]])
    assert result.exit_code == code, result.output
    if code == 3:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
        if message != "bad:":
            assert message in lines[0]
    else:
        assert message in result.output
    assert not (tmp_path / "r.html").exists()


def test_unwritable_output_is_one_line(scores, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["report", str(scores), "-o", str(blocker / "r.html")])
    assert result.exit_code == 3
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and "unexpected" not in result.output


def test_command_refuses_to_overwrite_the_scores(tmp_path, scores):
    copy = write_jsonl(tmp_path / "s.jsonl", read_jsonl(scores))
    result = CliRunner().invoke(main, ["report", str(copy), "-o", str(copy)])
    assert result.exit_code == 2 and read_jsonl(copy) == read_jsonl(scores)


def test_empty_scores_file_gives_an_empty_report(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(main, ["report", str(empty), "-o", str(tmp_path / "r.html"),
                                       "--markdown", str(tmp_path / "s.md")])
    assert result.exit_code == 0, result.output
    data = page_data((tmp_path / "r.html").read_text())
    assert data["units"] == [] and data["summary"]["total"] == 0
    assert "**0 edits**" in (tmp_path / "s.md").read_text()


def test_installed_command(scores, tmp_path):
    out = tmp_path / "report.html"
    result = run_cli("report", scores, "-o", out, "--markdown", tmp_path / "summary.md", "--threshold", "0.6")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "report:" in result.stderr and "11 edits" in result.stderr
    assert page_data(out.read_text(encoding="utf-8"))["threshold"] == 0.6
    assert "reward ≥ 0.6" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    missing = run_cli("report", tmp_path / "nope.jsonl", "-o", out)
    assert missing.returncode == 3 and missing.stderr.strip().count("\n") == 0
    assert "nope.jsonl" in missing.stderr
