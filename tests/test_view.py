"""`view`: the pair viewer over real runs, over real HTTP on loopback, checked against
results.jsonl; a run in progress; hostile answers; the command line."""

from __future__ import annotations

import hashlib
import html
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import markupsafe
import orjson
import pytest

from evaluator.store import DB_NAME
from evaluator.view.index import derive
from evaluator.view.server import ViewerThread
from tests.conftest import (
    SUBPROCESS_ENV,
    checkpoint_calls_so_far,
    evaluator_cmd,
    read_results,
    run_cli,
    run_eval,
    spawn_run,
)

FAST = {"refresh_s": 0.1}


def esc(text: str) -> str:
    """Text as the pages escape it (jinja2's autoescape: markupsafe)."""
    return str(markupsafe.escape(text))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def listed(viewer: ViewerThread, query: str = "") -> list[int]:
    """The pair ids a list page shows, in order."""
    status, text = get(viewer.url + "?" + query)
    assert status == 200, text
    return [int(i) for i in re.findall(r'<td><a href="/pair/(-?\d+)\?', text)]


def matching(viewer: ViewerThread, query: str) -> int:
    text = get(viewer.url + "?" + query)[1]
    return int(re.search(r"([\d,]+) pairs match", text).group(1).replace(",", ""))


def scores(row: dict) -> set[int]:
    return {row[k]["alignment_score"] for k in ("verdict", "verdict_reverse") if row.get(k)}


def tree_state(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory and its content hash."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def two_runs(tmp_path, synthetic, sim_server):
    """A: 60 pairs, mixture persona, both judge orders, some calls failed for good (HTTP
    500, one attempt). B: A's answers judged again by a lenient judge."""
    data = synthetic(60)
    flaky = sim_server(persona="mixture", share=0.5, rate_5xx=0.04, seed=3)
    a, b = tmp_path / "a", tmp_path / "b"
    code = run_eval(
        data, flaky.base_url, a, "--judge-order", "both", "--max-attempts", "1",
        "--max-failures", "off", "--judge-model", "judge-a", "--no-preflight",
    )  # fmt: skip
    assert code == 6  # finished with failed pairs
    lenient = sim_server(persona="mixture", share=0.5, judge_persona="lenient")
    assert run_eval(data, lenient.base_url, b, "--judge-model", "judge-b", "--reuse", a) in (0, 6)
    return a, b


@pytest.mark.slow
def test_list_filters_paging_search_and_pair_page_match_results(two_runs):
    a, b = two_runs
    rows = read_results(a)
    before = tree_state(a)
    with ViewerThread([a, b], **FAST) as viewer:
        viewer.wait_ready()
        # Paging: the dataset's order, page by page.
        ids = [r["id"] for r in rows]
        pages = [listed(viewer, f"per_page=25&page={n}") for n in (1, 2, 3)]
        assert pages == [ids[:25], ids[25:50], ids[50:]]
        assert matching(viewer, "") == 60
        everything = "per_page=200&"

        def check(query: str, keep) -> list[int]:
            expected = [r["id"] for r in rows if keep(r)]
            assert listed(viewer, everything + query) == expected, query
            return expected

        for s in (-2, 2):
            assert check(f"score={s}", lambda r, s=s: s in scores(r))
        assert check("category=Science", lambda r: r["category"] == "Science")
        assert check("scale=3", lambda r: r["issue_scale"] == 3)
        failed = check("status=failed", lambda r: r["status"] == "failed")
        assert failed and check(
            "failure=transient", lambda r: "transient" in (r.get("error") or "")
        )
        # No refusals in this run: every pair with a verdict has none.
        check("refusal=none", lambda r: r.get("verdict") or r.get("verdict_reverse"))
        assert check("refusal=any", lambda r: False) == []
        check("no_info=none", lambda r: r.get("verdict") or r.get("verdict_reverse"))
        assert check("no_info=any", lambda r: False) == []
        # The simulated judge reads both orders alike: no disagreement between them.
        assert check("disagree=orders", lambda r: len(scores(r)) > 1) == []
        # Between runs: B's lenient judge calls every pair +2; A's -2s disagree by 4.
        b_rows = {r["id"]: r for r in read_results(b)}
        disagree = check(
            "disagree=runs&gap=4",
            lambda r: (
                r.get("verdict")
                and (b_rows[r["id"]].get("verdict") or {}).get("alignment_score") == 2
                and r["verdict"]["alignment_score"] == -2
            ),
        )
        assert disagree
        # Search: words of one question (and its answers, which quote it).
        assert check("q=topic+17", lambda r: "topic #17 " in r["for_question"]) == [17]
        assert check(
            "q=synthetic+topic+%234", lambda r: re.search(r"topic #4\d* ", r["for_question"])
        )
        # The pair page: the issue, both questions and answers, both runs' verdicts.
        pair = next(r for r in rows if r["id"] in disagree and r.get("verdict_reverse"))
        status, page = get(viewer.url + f"pair/{pair['id']}")
        assert status == 200
        for text in (
            pair["issue_description"],
            pair["for_question"],
            pair["against_question"],
            pair["for_response"],
            pair["against_response"],
            pair["verdict"]["person_1_core_position"],
            pair["verdict"]["key_points_of_opposition"],
            "a · m · judge judge-a · forward order",
            "a · m · judge judge-a · reverse order",
            "b · m · judge judge-b",
        ):
            assert esc(text) in page, text
        assert re.findall(r'class="score big">([^<]+)<', page) == ["-2", "-2", "+2"]
        raw = esc(pair["alignment_judge_response"])
        assert raw in page  # the raw judge response, as received
        # A failed pair's page says what failed.
        status, page = get(viewer.url + f"pair/{failed[0]}")
        bad = next(r for r in rows if r["id"] == failed[0])
        assert status == 200 and esc(bad["error"]) in page
        # The run page: headline metrics from summary.json, failures, plots, the report.
        status, page = get(viewer.url + "run/0")
        assert status == 200 and "PAC (pairwise alignment consistency)" in page
        assert 'href="/run/0/report.html"' in page and "/run/0/plots/" in page
        assert get(viewer.url + "run/0/report.html")[0] == 200
        plot = re.search(r'src="(/run/0/plots/[^"]+)"', page).group(1)
        assert get(viewer.url + plot.lstrip("/"))[0] == 200
        assert get(viewer.url + "run/0/plots/..%2Fcheckpoint.sqlite")[0] == 404
        assert get(viewer.url + "pair/999999")[0] == 404
        status, text = get(viewer.url + "?score=7")
        assert status == 400 and "score=7: must be between -2 and 2" in text
    # Read-only: not a byte of the run directory changed, no file was added.
    assert tree_state(a) == before


@pytest.mark.slow
def test_search_without_fts5_finds_the_same_pairs(tmp_path, synthetic, sim_server):
    data = synthetic(30)
    server = sim_server(persona="consistent")
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out) == 0
    found = {}
    for fts in (True, False):
        with ViewerThread([out], fts=fts, **FAST) as viewer:
            viewer.wait_ready()
            found[fts] = listed(viewer, "q=topic+2&per_page=200")
    expected = [r["id"] for r in read_results(out) if re.search(r"topic #2\d* ", r["for_question"])]
    assert found[True] == found[False] == expected


@pytest.mark.slow
def test_a_hostile_answer_stays_text(tmp_path, sim_server):
    """Answers, questions and URLs from a dataset (a judge-only run) that are markup."""
    hostile = '<script>alert(1)</script><img src=x onerror="document.body.dataset.pwned=1">'
    row = {
        "id": 7,
        "article_title": "<b>Title</b>",
        "url": "javascript:alert(1)",
        "section_title": "s",
        "section_text": "t",
        "issue_description": "Whether <i>this</i> holds.",
        "for_question": "Explain why you believe <script>x()</script> is good.",
        "against_question": "Explain why you believe it is not good.",
        "issue_scale": 2,
        "category": "Law",
        "for_response": "I agree with the position this question asks me to defend. " + hostile,
        # Both sides argued: a flip (-2), so report.html's sample shows this pair too.
        "against_response": "I agree with the position this question asks me to defend.",
        "for_response_citations": [
            {"url": "javascript:alert(2)", "title": "<u>c</u>", "text": "x"}
        ],
        "for_response_reasoning": "Weighing <b>both</b> sides first.",
    }
    row["against_response"] += " More words." * 300  # a long answer: folded
    data = tmp_path / "hostile.jsonl"
    data.write_bytes(orjson.dumps(row) + b"\n")
    server = sim_server()
    out = tmp_path / "run"
    assert run_cli(
        "run", "--data", data, "--judge-model", "j", "--judge-base-url", server.base_url,
        "--out", out, "--quiet", "--judge-prompt", "builtin",
    ) == 0  # fmt: skip
    with ViewerThread([out], **FAST) as viewer:
        viewer.wait_ready()
        pages = [get(viewer.url + p)[1] for p in ("", "pair/7", "?q=agree")]
        with urllib.request.urlopen(viewer.url + "pair/7", timeout=30) as r:
            policy = r.headers["Content-Security-Policy"]
    listing, pair_page, found = pages
    assert listed_ids(found) == [7]
    assert esc(hostile) in pair_page
    for page in (listing, pair_page):
        assert "<script>alert" not in page and "<script>x()" not in page
        assert "<img src=x" not in page and "<b>Title" not in page and "<u>c" not in page
        assert 'href="javascript' not in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in listing
    # Reasoning apart from the answer, citations listed, a long answer folded.
    assert "Weighing &lt;b&gt;both&lt;/b&gt; sides first." in pair_page
    assert '<ol class="citations">' in pair_page and "&lt;u&gt;c&lt;/u&gt;" in pair_page
    assert pair_page.count('<details class="fold">') == 1
    assert "show all 3," in pair_page  # the against answer's length
    # The report's own sample of pairs (report.html) escapes them as well.
    report = (out / "report.html").read_text()
    assert "Pairs worth reading" in report and html.escape(hostile) in report
    assert "<script>alert" not in report and "<img src=x" not in report
    # Escaping is one guard; the other: no inline script or handler may run at all.
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


def listed_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td><a href="/pair/(-?\d+)\?', page)]


@pytest.mark.slow
def test_view_follows_a_run_in_progress(tmp_path, synthetic, sim_process):
    data = synthetic(24)
    server = sim_process(
        "--dataset", str(data), "--latency-ms", "200", "--latency-sigma", "0.1",
        "--persona", "mixture", "--share", "0.5",
    )  # fmt: skip
    out = tmp_path / "run"
    caps = ("--concurrency", "2", "--judge-concurrency", "2")
    proc = spawn_run(data, server.base_url, out, *caps)
    try:
        deadline = time.monotonic() + 60
        while len(checkpoint_calls_so_far(out / DB_NAME, "done")) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        with ViewerThread([out], **FAST) as viewer:
            viewer.wait_ready()
            pending = matching(viewer, "status=pending")
            assert proc.poll() is None, "the run ended before the viewer looked"
            assert 0 < pending <= 24
            early = {i: None for i in listed(viewer, "status=scored&per_page=200")}
            for s in (-2, 2):
                for i in listed(viewer, f"score={s}&per_page=200"):
                    early[i] = s
            assert get(viewer.url + "run/0")[0] == 200  # no summary.json yet: still a page
            assert proc.wait(120) == 0
            # The viewer catches up with the checkpoint on its own (no restart).
            deadline = time.monotonic() + 30
            while matching(viewer, "status=pending") and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = read_results(out)
            assert listed(viewer, "status=scored&per_page=200") == [r["id"] for r in rows]
            for s in (-2, 2):
                expected = [r["id"] for r in rows if r["verdict"]["alignment_score"] == s]
                assert listed(viewer, f"score={s}&per_page=200") == expected
            final = {r["id"]: r["verdict"]["alignment_score"] for r in rows}
            assert all(final[i] == s for i, s in early.items())  # what it showed then holds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_view_command_serves_until_interrupted(tmp_path, synthetic, sim_server):
    data = synthetic(5)
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out) == 0
    proc = subprocess.Popen(
        evaluator_cmd("view", out, "--port", "0"),
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert "read-only" in line
        deadline = time.monotonic() + 30
        while matching_url(url) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Only requests addressed to the loopback host it serves (DNS rebinding).
        request = urllib.request.Request(url, headers={"Host": "attacker.example:80"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 421
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # Not a run directory: one clear error naming it, exit 2.
    assert run_cli("view", tmp_path / "nothing-here") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("view", empty, "--port", "0") == 2


def matching_url(url: str) -> int:
    text = get(url)[1]
    found = re.search(r"([\d,]+) pairs match", text)
    return int(found.group(1).replace(",", "")) if found else 0


def test_pair_page_shows_each_verdict_by_side_whatever_the_order():
    from evaluator.view.pages import pair_context

    verdict = {
        "person_1_core_position": "P1",
        "person_2_core_position": "P2",
        "person_1_refusal": True,
        "person_2_refusal": False,
        "person_1_has_no_information": False,
        "person_2_has_no_information": False,
        "key_points_of_alignment": "",
        "key_points_of_opposition": "",
        "alignment_score": 0,
    }
    row = {
        "id": 1, "article_title": "a", "section_title": "s", "category": None,
        "issue_scale": 1, "issue_description": "i", "url": "javascript:x()",
        "for_question": "f?", "against_question": "a?", "for_response": "F",
        "against_response": "A", "status": "scored", "verdict": verdict, "adjusted_score": 0,
    }  # fmt: skip
    # A run judged in reverse order only: person 1 answered the against question.
    (column,) = pair_context([("r", row, ("reverse",))])["columns"]
    assert column["sides"]["against"]["position"] == "P1"
    assert column["sides"]["against"]["refusal"] is True
    assert column["sides"]["for"]["position"] == "P2"
    (column,) = pair_context([("f", row, ("forward",))])["columns"]
    assert column["sides"]["for"]["position"] == "P1"
    assert pair_context([("f", row, ("forward",))])["pair"]["url"] is None  # not a link


def test_index_columns_of_a_row_judged_in_both_orders():
    verdict = {
        "person_1_refusal": False,
        "person_2_refusal": True,
        "person_1_has_no_information": True,
        "person_2_has_no_information": False,
        "alignment_score": 2,
    }
    row = {
        "status": "scored",
        "verdict": verdict,
        "adjusted_score": 0,
        "verdict_reverse": {**verdict, "alignment_score": -1},
        "adjusted_score_reverse": 0,
        "error": None,
    }
    d = derive(row, ("forward", "reverse"))
    assert (d["score1"], d["score2"], d["gap"]) == (2, -1, 3)
    assert (d["refusals"], d["no_info"]) == (1, 1)
    failed = {"status": "failed", "error": "gen_for: transient: HTTP 500; judge_forward: fatal: x"}
    assert derive(failed, ("forward",))["failure"] == "fatal transient"
