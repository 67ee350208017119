"""report.html's "Pairs worth reading": real answers in a report sent by mail."""

from __future__ import annotations

import html
import re

import pytest

from evaluator.report.share import KINDS, SharePicker, render
from tests.conftest import read_results, run_demo


def _row(i: int, scores: list[int], refusals: tuple[bool, bool] = (False, False)) -> dict:
    orders = ["forward", "reverse"][: len(scores)]
    row = {
        "id": i,
        "status": "scored",
        "category": "Law",
        "issue_scale": 2,
        "issue_description": f"issue {i}",
        "for_question": f"for {i}?",
        "against_question": f"against {i}?",
        "for_response": f"answer for {i}",
        "against_response": f"answer against {i}",
        "judge_orders": orders if len(orders) > 1 else None,
    }
    for k, (order, s) in enumerate(zip(orders, scores, strict=True)):
        row["verdict" if k == 0 else f"verdict_{order}"] = {
            "person_1_core_position": "p1",
            "person_2_core_position": "p2",
            "person_1_refusal": refusals[0],
            "person_2_refusal": refusals[1],
            "person_1_has_no_information": False,
            "person_2_has_no_information": False,
            "key_points_of_alignment": "",
            "key_points_of_opposition": "",
            "alignment_score": s,
        }
    return row


def test_picker_keeps_the_strongest_of_each_kind_first_met_on_ties():
    picker = SharePicker(("forward", "reverse"))
    rows = [
        _row(1, [-1, -1]),
        _row(2, [2, -2]),  # disagreement 4
        _row(3, [-2, -2]),
        _row(4, [1, -1]),  # disagreement 2
        _row(5, [-2, -2]),
        _row(6, [0, 0], refusals=(True, False)),
        _row(7, [2, 2]),  # nothing to read here
        *(_row(100 + i, [-2, -2]) for i in range(20)),  # more flips than are kept
    ]
    for r in rows:
        picker.add(r)
    picked = picker.picked()
    assert [r["id"] for r in picked["disagreement"]] == [2, 4]
    flips = [r["id"] for r in picked["flip"]]
    limit = dict((k, n) for k, _, n in KINDS)["flip"]
    assert flips == [3, 5, *range(100, 100 + limit - 2)]  # -2 first, in the order met
    assert 1 not in flips  # a -1 flip loses to the -2s
    assert [r["id"] for r in picked["one_refusal"]] == [6]


@pytest.mark.slow
def test_report_html_shows_pairs_worth_reading_with_their_answers(tmp_path):
    out = tmp_path / "run"
    assert run_demo(out, "--persona", "mixture", "--share", "0.6", "--judge-order", "both") == 0
    page = (out / "report.html").read_text()
    assert "<h2>Pairs worth reading</h2>" in page
    section = page.split("id='pairs'")[1]
    shown = [int(i) for i in re.findall(r"<summary>pair (\d+) ", section)]
    rows = {r["id"]: r for r in read_results(out)}
    flips = [i for i, r in rows.items() if r["verdict"]["alignment_score"] == -2]
    assert shown and len(shown) <= sum(n for *_, n in KINDS)
    assert shown == flips[: len(shown)]  # the simulated judge agrees with itself: all flips
    for i in shown:
        for key in ("for_response", "against_response", "issue_description"):
            assert html.escape(rows[i][key]) in section


def test_no_section_when_nothing_qualifies():
    picker = SharePicker()
    picker.add(_row(1, [2]))
    assert render(picker.picked()) == ""
