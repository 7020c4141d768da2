"""The HTML report in a real headless Chromium (Debian's chromium +
chromedriver, driven by Selenium): rows and boxes render, sorting, filtering,
paging, no script injection, a screenshot.

Skipped only where the browser is missing and the CI variable is not set; in CI
(``CI`` set, as by GitHub Actions and ``.ci/run``'s callers) a missing browser
fails the test.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from conftest import write_jsonl
from report_fixtures import XSS, crafted_records, err, ok

from spatialreward.report import write_html_report
from spatialreward.testing.browser import HeadlessChromium, find_browser, wait_until_ready

pytestmark = pytest.mark.browser  # --full only (tests/conftest.py)


PAGE = 50  # rows per page (the page's default)
EXTRA_OK = 60  # synthetic rows beyond the crafted ones, so that there is more than one page
EXTRA_ERRORS = 6


@pytest.fixture(scope="module")
def browser_available():
    _, _, problem = find_browser()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the report's browser test cannot run: {problem}", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def report(photos, tmp_path_factory, browser_available) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report-browser")
    rng = random.Random(7)
    records = crafted_records(photos, root)
    pairs = [("coffee", "coffee_red_square"), ("coffee", "coffee_blur"), ("astronaut", "astronaut_mirror"),
             ("coffee", "coffee_gray")]
    for i in range(EXTRA_OK):
        src, edt = pairs[i % len(pairs)]
        boxes = []
        for _ in range(rng.randint(0, 3)):
            x1, y1 = rng.randint(0, 700), rng.randint(0, 700)
            boxes.append((f"region {len(boxes)}", (x1, y1, x1 + rng.randint(50, 300), y1 + rng.randint(50, 300))))
        records.append(ok(f"syn-{i:03d}", round(rng.random(), 4), photos[src], photos[edt], regions=boxes,
                          category=rng.choice(["add", "remove", "style"]),
                          size=(300, 512) if src == "astronaut" else (600, 400)))
    for i in range(EXTRA_ERRORS):
        records.append(err(f"syn-err-{i}", "parse", f"bad answer {i}", photos["coffee"], photos["coffee_blur"]))
    scores = write_jsonl(root / "scores.jsonl", records)
    out = root / "report.html"
    write_html_report(scores, out, threshold=0.5, images=60)
    html = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    data["images"] = json.loads(re.search(r'id="report-images">(.*?)</script>', html, re.S).group(1))
    return out, data


@pytest.fixture(scope="module")
def driver(browser_available, tmp_path_factory):
    with HeadlessChromium(width=1400, height=1000, profile_dir=tmp_path_factory.mktemp("chromium-profile")) as d:
        yield d


def load(driver, path: Path) -> None:
    driver.get(path.as_uri())
    wait_until_ready(driver)


def first_reward_per_row(driver) -> list[float | None]:
    """The reward shown in each row's first line (a group's best candidate)."""
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('#edits tbody.unit')).map("
        "  b => b.querySelector('tr.rec td.reward').textContent)")
    return [None if c == "–" else float(c) for c in cells]


def is_worst_first(values) -> bool:
    scored = [v for v in values if v is not None]
    nulls = len(values) - len(scored)
    return all(v is None for v in values[:nulls]) and scored == sorted(scored)


def test_rows_and_boxes_render(driver, report):
    path, data = report
    load(driver, path)
    units = data["units"][:PAGE]
    assert len(data["units"]) > PAGE
    assert len(driver.find_elements("css selector", "#edits tbody.unit")) == PAGE
    assert len(driver.find_elements("css selector", "#edits tr.rec")) == sum(len(u) for u in units)
    boxes = sum(len(r.get("b", [])) for u in units for r in u)
    assert boxes > 15
    assert len(driver.find_elements("css selector", "#edits tr.rec .frame.edited .box")) == boxes
    # boxes are placed in percent of a frame with the edited image's aspect ratio
    for size in ([600, 400], [300, 512]):
        record = next(r for u in units for r in u if r.get("b") and r.get("sz") == size)
        geometry = driver.execute_script(
            "var f = document.querySelector('tr.rec[data-id=\"' + arguments[0] + '\"] .frame.edited');"
            "var b = f.querySelector('.box'); var fr = f.getBoundingClientRect(), br = b.getBoundingClientRect();"
            "return [(br.left - fr.left) / fr.width, (br.top - fr.top) / fr.height, br.width / fr.width,"
            " br.height / fr.height, fr.width / fr.height];", record["id"])
        x1, y1, x2, y2 = record["b"][0][:4]
        assert geometry[0] == pytest.approx(x1 / 1000, abs=0.02)
        assert geometry[1] == pytest.approx(y1 / 1000, abs=0.02)
        assert geometry[2] == pytest.approx((x2 - x1) / 1000, abs=0.03)
        assert geometry[3] == pytest.approx((y2 - y1) / 1000, abs=0.03)
        assert geometry[4] == pytest.approx(size[0] / size[1], abs=0.02)
    images = driver.execute_script(
        "return Array.from(document.querySelectorAll('#edits .frame img')).filter(i => i.complete && i.naturalWidth > 0).length")
    assert images > 40  # thumbnails decoded (the first 60 edits have them)
    assert driver.find_elements("css selector", ".frame .ph.missing")  # the missing image: a placeholder
    errors = driver.find_elements("css selector", "tr.rec.err .error-box .stage")
    assert {e.text.lower() for e in errors} >= {"input", "model", "parse"}


def test_click_header_sorts(driver, report):
    path, _ = report
    load(driver, path)
    before = first_reward_per_row(driver)
    assert is_worst_first(before)
    driver.find_element("css selector", 'th[data-sort="reward"] button').click()
    after = first_reward_per_row(driver)
    assert after != before
    scored = [v for v in after if v is not None]
    assert scored == sorted(scored, reverse=True) and after[: len(scored)] == scored  # best first, errors last
    assert driver.find_element("css selector", 'th[data-sort="reward"]').get_attribute("aria-sort") == "descending"
    driver.find_element("css selector", 'th[data-sort="overall"] button').click()
    overall = driver.execute_script(
        "return Array.from(document.querySelectorAll('#edits tbody.unit')).map("
        "  b => b.querySelector('tr.rec td.overall').dataset.value).filter(v => v !== undefined).map(Number)")
    assert overall and overall == sorted(overall)
    driver.find_element("css selector", 'th[data-sort="id"] button').click()
    ids = driver.execute_script(
        "return Array.from(document.querySelectorAll('#edits tbody.unit')).map("
        "  b => b.querySelector('tr.group-head .mono, tr.rec .rid').textContent)")
    assert ids == sorted(ids)


def test_filters_and_paging(driver, report):
    from selenium.webdriver.support.ui import Select

    path, data = report
    load(driver, path)
    Select(driver.find_element("id", "f-status")).select_by_value("error")
    rows = driver.find_elements("css selector", "#edits tr.rec")
    n_errors = sum(r["st"] == "error" for u in data["units"] for r in u)
    assert len(rows) == n_errors == 4 + EXTRA_ERRORS
    assert all("err" in row.get_attribute("class").split() for row in rows)
    assert all(row.find_elements("css selector", ".error-box .msg") for row in rows)
    Select(driver.find_element("id", "f-status")).select_by_value("all")
    Select(driver.find_element("id", "f-cat")).select_by_value("add")
    cats = [e.text for e in driver.find_elements("css selector", "#edits tr.rec .chip.cat")]
    assert cats and set(cats) == {"add"}
    assert len(cats) == len(driver.find_elements("css selector", "#edits tr.rec"))
    Select(driver.find_element("id", "f-cat")).select_by_value("")
    assert f"rows 1–{PAGE} of" in driver.find_element("css selector", "#pager-top .info").text
    driver.find_element("css selector", "#pager-top button.next").click()
    info = driver.find_element("css selector", "#pager-top .info").text
    assert info.startswith(f"rows {PAGE + 1}–{len(data['units'])} of {len(data['units'])}")
    assert len(driver.find_elements("css selector", "#edits tbody.unit")) == len(data["units"]) - PAGE
    search = driver.find_element("id", "f-q")
    search.send_keys("syn-007")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 5).until(lambda d: len(d.find_elements("css selector", "#edits tr.rec")) == 1)


def test_untrusted_text_stays_text(driver, report):
    path, _ = report
    load(driver, path)
    assert driver.execute_script("return typeof window.alert === 'function' && document.scripts.length") == 3
    row = driver.find_element("css selector", 'tr.rec[data-id="xss"]')
    assert row.find_element("css selector", "p.ins").text == XSS
    assert not row.find_elements("css selector", "p.ins *, .legend b, .why script")
    badge = row.find_element("css selector", ".why .badge")  # <|bbox_0|>: a badge in region 0's colour
    box = row.find_element("css selector", ".frame.edited .box")
    assert badge.text == "0" and badge.value_of_css_property("background-color") == box.value_of_css_property("border-top-color")
    assert "Overall:" in row.find_element("css selector", ".why").text and "<|" not in row.text
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no CSP violation, no script error, no failed load


def test_screenshot(driver, report, tmp_path):
    path, _ = report
    load(driver, path)
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size[0] >= 1000 and len(set(image.convert("L").resize((64, 64)).tobytes())) > 50


def test_several_sources_render_one_frame_each(driver, photos, tmp_path):
    """A record whose ``source`` is a list shows every source, in order, beside the edited image."""
    multi = ok("multi", 0.3, photos["coffee"], photos["coffee_red_square"], regions=[("square", (100, 100, 400, 400))])
    multi["source"] = [str(photos["coffee"]), str(photos["astronaut"]), str(photos["coffee_gray"])]
    scores = write_jsonl(tmp_path / "scores.jsonl", [multi, ok("single", 0.8, photos["coffee"], photos["coffee_blur"])])
    out = tmp_path / "several.html"
    write_html_report(scores, out, threshold=0.5)
    load(driver, out)
    frames = driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.rec[data-id=\"multi\"] .frame.source'))"
        ".map(f => [f.title, f.querySelectorAll('img').length])")
    assert frames == [[f"source {k + 1}: {path}", 1] for k, path in enumerate(multi["source"])]
    assert len(driver.find_elements("css selector", 'tr.rec[data-id="multi"] .frame.edited .box')) == 1
    single = driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.rec[data-id=\"single\"] .frame.source')).map(f => f.title)")
    assert single == [f"source: {photos['coffee']}"]
