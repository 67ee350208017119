"""Checking rows against the schema: a source's columns once (resolve_columns), then each
row (validate_row, with its answers if the dataset holds them)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from evaluator.dataset.schema import (
    ANSWER_COLUMNS,
    ID_MAX,
    ID_MIN,
    NONEMPTY_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    STR_COLUMNS,
    Answers,
    BadRow,
    DatasetError,
    Pair,
)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def validate_row(row: dict[str, Any], where: str) -> Pair | BadRow:
    """Check one raw row against the schema (spec §1)."""
    pair_id = as_int(row.get("id"))
    if "id" in row and pair_id is not None:
        where = f"id {pair_id}"
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        return BadRow(where, f"missing column(s): {', '.join(missing)}")
    if pair_id is None:
        return BadRow(where, f"id must be an integer, got {row['id']!r:.40}")
    if not ID_MIN <= pair_id <= ID_MAX:
        digits = str(pair_id)
        shown = digits if len(digits) <= 24 else f"{digits[:12]}...({len(digits)} digits)"
        return BadRow(where, f"id {shown} is outside the 64-bit integer range")
    for col in STR_COLUMNS:
        if not isinstance(row[col], str):
            return BadRow(where, f"{col} must be text, got {type(row[col]).__name__}")
    for col in NONEMPTY_COLUMNS:
        if not row[col].strip():
            return BadRow(where, f"{col} is empty")
    scale = as_int(row["issue_scale"])
    if scale is None or not 1 <= scale <= 5:
        return BadRow(where, f"issue_scale must be an integer 1-5, got {row['issue_scale']!r:.40}")
    category = row.get("category")
    if isinstance(category, float) and math.isnan(category):
        category = None  # pandas writes a missing string as NaN
    if category == "":
        category = None
    if category is not None and not isinstance(category, str):
        return BadRow(where, f"category must be text, got {type(category).__name__}")
    answers = read_answers(row, where)
    if isinstance(answers, BadRow):
        return answers
    return Pair(
        id=pair_id,
        article_title=row["article_title"],
        url=row["url"],
        section_title=row["section_title"],
        section_text=row["section_text"],
        issue_description=row["issue_description"],
        for_question=row["for_question"],
        against_question=row["against_question"],
        issue_scale=scale,
        category=category,
        answers=answers,
    )


def _answer_text(value: Any) -> str | None:
    """An answer as text: a plain string or the reference's `{content, role}` record."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_answers(row: dict[str, Any], where: str) -> Answers | BadRow | None:
    """The answers a row holds (None when it has no answer columns)."""
    present = [c for c in ANSWER_COLUMNS if c in row]
    if not present:
        return None
    if len(present) == 1:
        missing = next(c for c in ANSWER_COLUMNS if c not in present)
        return BadRow(where, f"{present[0]} is given but {missing} is missing")
    texts = {}
    for col in ANSWER_COLUMNS:
        text = _answer_text(row[col])
        if text is None:
            kind = "missing" if row[col] is None else f"of type {type(row[col]).__name__}"
            return BadRow(
                where,
                f"{col} is {kind}: an answer is text or a {{content, role}} record",
            )
        texts[col] = text
    extra: dict[str, Any] = {}
    for side in ("for", "against"):
        reasoning = row.get(f"{side}_response_reasoning")
        extra[f"{side}_reasoning"] = reasoning if isinstance(reasoning, str) and reasoning else None
        citations = row.get(f"{side}_response_citations")
        extra[f"{side}_citations"] = list(citations) if isinstance(citations, list) and citations else None
    return Answers(texts["for_response"], texts["against_response"], **extra)


def resolve_columns(
    names: list[str], source: str, on_note: Callable[[str], None] | None = None
) -> dict[str, str]:
    """Check a source's columns once, before any row is used: {name in the file: schema name}.

    A required column that is missing stops everything (DatasetError naming it and the
    closest column present); an optional column spelled with other capitals (`Category`)
    is read under its schema name, with one note, never dropped silently.
    """
    present = [str(n) for n in names]
    lowered = {n.lower(): n for n in present}
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        parts = []
        for col in missing:
            near = _closest_column(col, present)
            parts.append(f"`{col}`" + (f" (did you mean `{near}`?)" if near else ""))
        shown = ", ".join(f"`{n}`" for n in present[:20]) + (" ..." if len(present) > 20 else "")
        raise DatasetError(
            f"{source}: required column(s) missing: {', '.join(parts)}. The file's columns: "
            f"{shown}. Rename the column(s) to the VAL-Bench names (spec: id, article_title, "
            "url, section_title, section_text, issue_description, for_question, "
            "against_question, issue_scale; optional: category)"
        )
    rename: dict[str, str] = {}
    for col in OPTIONAL_COLUMNS:
        if col in present:
            continue
        other = lowered.get(col.lower())
        if other is not None:
            rename[other] = col
            if on_note is not None:
                on_note(f"{source}: column `{other}` is read as `{col}`")
    return rename


def _closest_column(col: str, present: list[str]) -> str | None:
    for name in present:
        if name.lower() == col:
            return name
    lowered = {n.lower(): n for n in present}
    close = difflib.get_close_matches(col, list(lowered), n=1, cutoff=0.7)
    return lowered[close[0]] if close else None
