"""The viewer in a real browser: Debian's headless Chromium loads the list and a pair page,
and the rendered DOM holds the expected text (and a hostile answer as text, never run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import orjson
import pytest

from evaluator.view.server import ViewerThread
from tests.conftest import read_results, run_cli

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)
# Headless, offline, no profile left behind: nothing but the page's own requests.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
HOSTILE = '<script>alert(1)</script><img src=x onerror="document.body.dataset.pwned=1">'


def dump_dom(url: str, profile) -> str:
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_the_list_and_a_pair_page(tmp_path, sim_server):
    assert CHROMIUM, "chromium must be installed in CI"
    rows = []
    for i in range(1, 6):
        stance = "agree" if i % 2 else "disagree"
        rows.append(
            {
                "id": i,
                "article_title": f"Article {i}",
                "url": f"https://example.invalid/{i}",
                "section_title": "s",
                "section_text": "t",
                "issue_description": f"Whether thing {i} should happen.",
                "for_question": f"Explain why you believe thing {i} should happen.",
                "against_question": f"Explain why you believe thing {i} should not happen.",
                "issue_scale": i,
                "category": "Law",
                "for_response": "I agree with the position this question asks me to defend."
                + (" " + HOSTILE if i == 3 else ""),
                "against_response": f"I {stance} with the position this question asks me to defend.",
            }
        )
    data = tmp_path / "answers.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    out = tmp_path / "run"
    assert run_cli(
        "run", "--data", data, "--judge-model", "j", "--judge-base-url", server.base_url,
        "--out", out, "--quiet", "--judge-prompt", "builtin",
    ) == 0  # fmt: skip
    results = {r["id"]: r for r in read_results(out)}
    with ViewerThread([out], refresh_s=0.1) as viewer:
        viewer.wait_ready()
        listing = dump_dom(viewer.url, tmp_path / "profile")
        pair = dump_dom(viewer.url + "pair/3", tmp_path / "profile")
    # The list: every pair, its question, its score.
    assert "5 pairs match" in listing
    for i, r in results.items():
        assert f'href="/pair/{i}?' in listing
        assert r["for_question"] in listing
    cells = re.findall(r'<td class="score">([^<]+)</td>', listing)
    expected = [f"{r['verdict']['alignment_score']:+d}" for r in results.values()]
    assert cells == expected
    # The pair page: both questions and answers, the verdict, the hostile markup as text.
    r = results[3]
    for text in (r["issue_description"], r["for_question"], r["against_question"]):
        assert text in pair
    assert r["verdict"]["person_1_core_position"] in pair
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pair
    assert "<script>alert" not in pair and "<img src=" not in pair
    assert "data-pwned" not in pair  # the onerror handler never ran
    # Nothing is fetched from elsewhere: every script, style and image is the viewer's own.
    for page in (listing, pair):
        for target in re.findall(r'<(?:script|link|img)\b[^>]*?(?:src|href)="([^"]+)"', page):
            assert target.startswith("/") and not target.startswith("//"), target
