"""HTML pages from templates (jinja2 with autoescape: every value a page shows, answers and
questions included, is escaped unless a template says otherwise, and none does)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import jinja2

FOLD_AT = 1200  # answers longer than this are folded (<details>) behind a preview
PREVIEW = 400

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("evaluator.view", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _score(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:+d}" if value else "0"


ENV.filters["score"] = _score
METRIC_NAMES = (
    ("pac", "PAC (pairwise alignment consistency)"),
    ("ref", "REF (response refusal)"),
    ("ref1", "REF1 (exactly one refuses)"),
    ("ref2", "REF2 (both refuse)"),
    ("ref_issue", "Issue-level refusal"),
    ("ninf", "NINF (response no-information)"),
    ("ninf1", "NINF1 (exactly one)"),
    ("ninf2", "NINF2 (both)"),
    ("ninf_issue", "Issue-level no-information"),
)


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


def safe_url(url: Any) -> str | None:
    """A link target only for http(s) URLs: a dataset's `javascript:` URL stays text."""
    if not isinstance(url, str):
        return None
    return url if urlparse(url.strip()).scheme in ("http", "https") else None


def _citations(cited: Any) -> list[dict[str, Any]]:
    out = []
    for c in cited or []:
        if isinstance(c, dict):
            out.append(
                {
                    "url": safe_url(c.get("url")),
                    "title": c.get("title") or c.get("url") or "",
                    "text": c.get("text") or c.get("cited_text") or "",
                }
            )
    return out


def _sides(row: dict[str, Any]) -> list[dict[str, Any]]:
    refused = row.get("provider_refusals") or {}
    return [
        {
            "side": side,
            "question": row[f"{side}_question"],
            "text": row.get(f"{side}_response"),
            "reasoning": row.get(f"{side}_reasoning"),
            "citations": _citations(row.get(f"{side}_citations")),
            "refused": refused.get(side),
        }
        for side in ("for", "against")
    ]


def _verdict_columns(
    label: str, row: dict[str, Any], orders: tuple[str, ...]
) -> list[dict[str, Any]]:
    out = []
    for k, order in enumerate(orders):
        suffix = "" if k == 0 else f"_{order}"
        v = row.get(f"verdict{suffix}")
        column: dict[str, Any] = {
            "label": label + (f" · {order} order" if len(orders) > 1 else ""),
            "status": row["status"],
            "source": "no judge call: both answers withheld"
            if row.get(f"verdict_source{suffix}") == "provider_refusal"
            else "",
            "score": v["alignment_score"] if v else None,
            "adjusted": row.get(f"adjusted_score{suffix}"),
            "alignment": v["key_points_of_alignment"] if v else "",
            "opposition": v["key_points_of_opposition"] if v else "",
            "error": row.get(f"verdict_error{suffix}"),
            "raw": row.get(f"alignment_judge_response{suffix}"),
            "sides": None,
        }
        if v:
            # Reverse order puts the against side first: show both by side, not by person.
            reverse = order == "reverse"
            persons = {"for": 2 if reverse else 1, "against": 1 if reverse else 2}
            column["sides"] = {
                side: {
                    "person": n,
                    "position": v[f"person_{n}_core_position"],
                    "refusal": v[f"person_{n}_refusal"],
                    "no_info": v[f"person_{n}_has_no_information"],
                }
                for side, n in persons.items()
            }
        out.append(column)
    return out


def pair_context(found: list[tuple[str, dict[str, Any], tuple[str, ...]]]) -> dict[str, Any]:
    """What pair.html shows of one pair in each run that has it: (run label, its row, the
    run's judge orders)."""
    _, first, _ = found[0]
    groups: list[dict[str, Any]] = []
    by_answers: dict[tuple[Any, Any], dict[str, Any]] = {}
    columns: list[dict[str, Any]] = []
    errors: list[str] = []
    notes: list[str] = []
    for label, row, orders in found:
        if (row["issue_description"], row["for_question"]) != (
            first["issue_description"],
            first["for_question"],
        ):
            notes.append(f"{label} holds a different pair under this id (another dataset?).")
        key = (row.get("for_response"), row.get("against_response"))
        group = by_answers.get(key)
        if group is None:
            group = {"runs": [], "sides": _sides(row), "pending": row["status"] == "pending"}
            by_answers[key] = group
            groups.append(group)
        group["runs"].append(label)
        columns.extend(_verdict_columns(label, row, orders))
        if row.get("error"):
            errors.append(f"{label}: {row['error']}")
    return {
        "pair": {
            **{
                k: first[k]
                for k in (
                    "id",
                    "article_title",
                    "section_title",
                    "category",
                    "issue_scale",
                    "issue_description",
                )
            },
            "url": safe_url(first["url"]),
        },
        "answers": groups,
        "columns": columns,
        "errors": errors,
        "notes": notes,
        "fold_at": FOLD_AT,
        "preview": PREVIEW,
    }


def metric_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    ci = summary.get("ci95") or {}
    rows = []
    for key, name in METRIC_NAMES:
        value = summary.get(key)
        interval = ci.get(key)
        rows.append(
            (
                name,
                "n/a" if value is None else f"{value:.2f}",
                f"{interval[0]:.2f} – {interval[1]:.2f}" if interval else "",
            )
        )
    return rows
