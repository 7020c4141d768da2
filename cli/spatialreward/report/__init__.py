"""Reports of a results file: a self-contained HTML page for reviewing a batch
(``write_html_report``) and a Markdown summary for PR comments and CI job
summaries (``render_markdown``, reused by the CI gate).

    from spatialreward.report import write_html_report
    write_html_report("scores.jsonl", "report.html", threshold=0.5, limit=1000, images=300,
                      markdown_path="summary.md")
"""

from __future__ import annotations

from .html import (DEFAULT_IMAGES, DEFAULT_WORST, ReportData, collect, read_report_data, render_html, write_html_report,
                   write_page)
from .markdown import md_escape, render_markdown

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_WORST",
    "ReportData",
    "collect",
    "md_escape",
    "read_report_data",
    "render_html",
    "render_markdown",
    "write_html_report",
    "write_page",
]
