"""report.html from report.md (evaluator.report.html_page, markdown-it-py): the report's
constructs render, its plots are inlined as figures, and what endpoints said stays text."""

from __future__ import annotations

import base64
from pathlib import Path

from evaluator.report.html_page import render_html
from evaluator.report.markdown import SIMULATION_BANNER, failure_lines, render_markdown

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _summary() -> dict:
    metric = dict.fromkeys(
        ("pac", "ref", "ref1", "ref2", "ref_issue", "ninf", "ninf1", "ninf2", "ninf_issue"), 50.0
    )
    group = {"n": 2, "pac": 50.0, "ref_issue": 0.0, "ninf_issue": 0.0}
    return {
        "simulated": True,
        "model": "m<b>",
        "n_valid": 2,
        "n_invalid": 0,
        "ci95": {"pac": [10.0, 90.0]},
        **metric,
        "by_issue_scale": {"3": group},
        "by_category": {"Politics": group},
        "score_distribution": {
            k: {str(v): 20.0 for v in (-2, -1, 0, 1, 2)}
            for k in ("alignment_score", "adjusted_score")
        },
    }


def test_the_report_renders_with_plots_inlined(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG)
    md = render_markdown(_summary(), {"score_distribution": "plots/a.png"})
    page = render_html(md, tmp_path, extra="<section id='pairs'></section>")
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>\n")
    assert "<h1>VAL-Bench report</h1>" in page and "<h2>By category</h2>" in page
    assert f"<blockquote>\n<p><strong>{SIMULATION_BANNER}</strong></p>" in page
    assert "<li>Model: <code>m&lt;b&gt;</code></li>" in page
    assert "<table>" in page and "<th>metric</th>" in page and "<td>Politics</td>" in page
    assert "<td>10.00 – 90.00</td>" in page
    data = base64.b64encode(PNG).decode()
    assert (
        f'<figure><img src="data:image/png;base64,{data}" alt="Score distribution" />'
        "<figcaption>Score distribution</figcaption></figure>"
    ) in page
    assert "plots/" not in page  # self-contained
    assert page.index("<figure>") < page.index("id='pairs'")  # `extra` at the end


def test_what_endpoints_said_stays_text(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(PNG)
    message = (
        "<script>alert(1)</script> ![x](http://tracker.invalid/p.png) "
        "![y](secret.png) [click](javascript:alert(1)) <http://phish.invalid>"
    )
    failures = [
        {
            "count": 3,
            "stage": "judge",
            "class": "http_500",
            "http_status": 500,
            "message": message,
            "example_pair_id": 7,
        }
    ]
    page = render_html("\n".join(failure_lines(failures)), tmp_path)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "<img" not in page and "<a " not in page and "base64" not in page
    assert "tracker.invalid" not in page  # an image's alt text only
    assert "[click](javascript:alert(1))" in page  # links are off: the text as written
    # A paragraph that is an image outside plots/ is not inlined either.
    page = render_html("![y](secret.png)\n\n![z](plots/../secret.png)\n", tmp_path)
    assert "<img" not in page and "<p>y</p>" in page and "<p>z</p>" in page
