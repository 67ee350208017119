"""A few pairs worth reading, with their answers, for report.html: a report sent by mail
shows real answers, not only totals.

Picked while results.jsonl is written (constant memory: at most a few dozen rows kept):
the judge orders' strongest disagreements, the most confident flips (the two answers take
opposite positions: the lowest scores, agreed by both orders where there are two), and
pairs where exactly one side refused. Ties go to the pair met first. Everything shown is
escaped; long answers are cut (the viewer, `python -m evaluator view DIR`, shows them whole).
"""

from __future__ import annotations

import heapq
from html import escape
from typing import Any

KINDS = (
    ("disagreement", "The judge orders disagree most", 12),
    ("flip", "Most confident flips: opposite positions on the two questions", 12),
    ("one_refusal", "One side refused, the other answered", 6),
)
ANSWER_CHARS = 3000


def _verdicts(row: dict[str, Any], orders: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(judge order, verdict) of each valid verdict; the row's first order has no suffix."""
    out = []
    for k, order in enumerate(orders):
        v = row.get("verdict" if k == 0 else f"verdict_{order}")
        if v:
            out.append((order, v))
    return out


def classify(
    row: dict[str, Any], orders: tuple[str, ...] = ("forward",)
) -> tuple[str, float] | None:
    """(kind, priority: higher is shown first) of a row worth reading, or None."""
    verdicts = _verdicts(row, orders)
    if row.get("status") not in ("scored", "invalid") or not verdicts:
        return None
    scores = [v["alignment_score"] for _, v in verdicts]
    refusals = [v["person_1_refusal"] + v["person_2_refusal"] for _, v in verdicts]
    if len(scores) == 2 and abs(scores[0] - scores[1]) >= 2:
        return "disagreement", abs(scores[0] - scores[1])
    mean = sum(scores) / len(scores)
    if mean <= -1 and not any(refusals):
        return "flip", -mean + 0.1 * len(scores)  # both orders at -2 before one
    if refusals[0] == 1:
        return "one_refusal", 0.0
    return None


def _cut(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    if len(text) <= ANSWER_CHARS:
        return text
    return text[:ANSWER_CHARS] + f" […] ({len(text) - ANSWER_CHARS:,} more characters)"


def _kept(row: dict[str, Any], orders: tuple[str, ...]) -> dict[str, Any]:
    """The parts of a row the section shows (answers cut)."""
    keys = ("id", "category", "issue_scale", "issue_description", "for_question")
    kept = {k: row.get(k) for k in (*keys, "against_question")}
    kept["for_response"] = _cut(row.get("for_response"))
    kept["against_response"] = _cut(row.get("against_response"))
    kept["verdicts"] = _verdicts(row, orders)
    return kept


class SharePicker:
    """Keeps the best few rows of each kind as rows stream past."""

    def __init__(self, orders: tuple[str, ...] = ("forward",)) -> None:
        self.orders = orders  # the run's judge orders (RunConfig.judge_orders)
        self._heaps: dict[str, list[tuple[float, int, dict[str, Any]]]] = {
            kind: [] for kind, _, _ in KINDS
        }
        self._limits = {kind: limit for kind, _, limit in KINDS}
        self._seen = 0

    def add(self, row: dict[str, Any]) -> None:
        self._seen += 1
        found = classify(row, self.orders)
        if found is None:
            return
        kind, priority = found
        heap = self._heaps[kind]
        key = (priority, -self._seen)  # the smallest key is dropped: low priority, late
        if len(heap) < self._limits[kind]:
            heapq.heappush(heap, (*key, _kept(row, self.orders)))
        elif key > heap[0][:2]:
            heapq.heapreplace(heap, (*key, _kept(row, self.orders)))

    def picked(self) -> dict[str, list[dict[str, Any]]]:
        return {
            kind: [row for *_, row in sorted(heap, key=lambda e: (-e[0], -e[1]))]
            for kind, heap in self._heaps.items()
        }


STYLE = (
    "#pairs details{border:1px solid #ddd;border-radius:4px;margin:.5em 0;padding:.3em .7em}"
    "#pairs summary{cursor:pointer;font-weight:600}#pairs .sides{display:grid;"
    "grid-template-columns:1fr 1fr;gap:1em}#pairs .answer{white-space:pre-wrap;"
    "background:#fafafa;padding:.4em;border-left:3px solid #ccc}#pairs .q{font-weight:600}"
    "#pairs .issue{font-style:italic}"
)


def _score(v: int) -> str:
    return f"{v:+d}" if v else "0"


def _pair_html(row: dict[str, Any]) -> str:
    e = escape
    scores = ", ".join(f"{_score(v['alignment_score'])} ({o})" for o, v in row["verdicts"])
    head = (
        f"pair {e(str(row['id']))} · {e(str(row['category'] or 'uncategorized'))} · "
        f"issue scale {e(str(row['issue_scale']))} · judge score {e(scores)}"
    )
    sides = []
    for side in ("for", "against"):
        answer = row[f"{side}_response"]
        sides.append(
            f"<div><p class='q'>{e(side.capitalize())} question: {e(str(row[f'{side}_question']))}</p>"
            + (
                f"<div class='answer'>{e(answer)}</div>"
                if answer is not None
                else "<p><em>no answer</em></p>"
            )
            + "</div>"
        )
    order, v = row["verdicts"][0]
    first, second = (2, 1) if order == "reverse" else (1, 2)  # reverse: against is person 1
    verdict = (
        f"<p>Judge ({e(order)} order): for side: {e(v[f'person_{first}_core_position'])}; "
        f"against side: {e(v[f'person_{second}_core_position'])}</p>"
        f"<p>Key points of alignment: {e(v['key_points_of_alignment'])}</p>"
        f"<p>Key points of opposition: {e(v['key_points_of_opposition'])}</p>"
    )
    return (
        f"<details><summary>{head}</summary>"
        f"<p class='issue'>Issue: {e(str(row['issue_description']))}</p>"
        f"<div class='sides'>{''.join(sides)}</div>{verdict}</details>"
    )


def render(picked: dict[str, list[dict[str, Any]]]) -> str:
    """report.html's section (empty when no pair qualifies)."""
    if not any(picked.values()):
        return ""
    parts = [
        f"<section id='pairs'><style>{STYLE}</style><h2>Pairs worth reading</h2>",
        "<p>A few pairs of this run with their answers (answers over "
        f"{ANSWER_CHARS:,} characters are cut). Every pair, with filters and search: "
        "<code>python -m evaluator view DIR</code>.</p>",
    ]
    for kind, title, _ in KINDS:
        rows = picked.get(kind) or []
        if rows:
            parts.append(f"<h3>{escape(title)} ({len(rows)})</h3>")
            parts.extend(_pair_html(r) for r in rows)
    parts.append("</section>")
    return "\n".join(parts)
