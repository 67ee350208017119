"""The pair list: filters from a page's query string, paged and filtered in SQL.

Each run's side index (evaluator.view.index) is attached read-only as r0, r1, ...; the list
is the pairs of one run (`run`), with the other runs' scores beside them (joined by pair id).
Only one page of rows ever leaves SQLite.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from evaluator.scoring import UNCATEGORIZED

FLAG_CHOICES = {"none": "= 0", "one": "= 1", "both": "= 2", "any": ">= 1"}
STATUSES = ("scored", "invalid", "failed", "pending")
SORTS = ("seq", "id", "score", "gap")
DISAGREE = ("orders", "runs")
PER_PAGE = (25, 50, 100, 200)
_WORD = re.compile(r"\w+")


class FilterError(ValueError):
    """A query-string value the list does not understand; the message names it."""


@dataclass(frozen=True)
class Filters:
    run: int = 0
    score: int | None = None
    category: str | None = None  # UNCATEGORIZED: pairs without one
    scale: int | None = None
    refusal: str | None = None  # FLAG_CHOICES
    no_info: str | None = None
    status: str | None = None
    failure: str | None = None
    disagree: str | None = None  # between judge orders, or between runs
    gap: int = 1  # the least score difference that counts as a disagreement
    q: str = ""
    sort: str = "seq"
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str], n_runs: int) -> Filters:
        def integer(name: str, lo: int, hi: int) -> int | None:
            text = params.get(name, "").strip()
            if not text:
                return None
            try:
                value = int(text)
            except ValueError:
                raise FilterError(f"{name}={text!r}: not a whole number") from None
            if not lo <= value <= hi:
                raise FilterError(f"{name}={value}: must be between {lo} and {hi}")
            return value

        def choice(name: str, allowed: tuple[str, ...] | dict[str, str]) -> str | None:
            text = params.get(name, "").strip()
            if text and text not in allowed:
                raise FilterError(f"{name}={text!r}: use one of {', '.join(allowed)}")
            return text or None

        per_page = integer("per_page", 1, max(PER_PAGE)) or 50
        return cls(
            run=integer("run", 0, n_runs - 1) or 0,
            score=integer("score", -2, 2),
            category=params.get("category") or None,
            scale=integer("scale", 1, 5),
            refusal=choice("refusal", FLAG_CHOICES),
            no_info=choice("no_info", FLAG_CHOICES),
            status=choice("status", STATUSES),
            failure=params.get("failure") or None,
            disagree=choice("disagree", DISAGREE if n_runs > 1 else DISAGREE[:1]),
            gap=integer("gap", 1, 4) or 1,
            q=params.get("q", "").strip()[:200],
            sort=choice("sort", SORTS) or "seq",
            page=integer("page", 1, 10**9) or 1,
            per_page=per_page,
        )

    def query(self, **changes: Any) -> str:
        """This list's query string with `changes` (links to other pages and filters)."""
        f = replace(self, **changes)
        default = Filters()
        out = {
            x.name: getattr(f, x.name)
            for x in fields(f)
            if getattr(f, x.name) != getattr(default, x.name)
        }
        return urlencode(out)


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    filters: Filters

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.filters.per_page))


@lru_cache(maxsize=64)
def _word_patterns(q: str) -> tuple[re.Pattern[str], ...]:
    words = [re.escape(w) for w in _WORD.findall(q)]
    whole = [re.compile(rf"\b{w}\b", re.IGNORECASE) for w in words[:-1]]
    return (*whole, re.compile(rf"\b{words[-1]}", re.IGNORECASE))


def words_match(text: str | None, q: str) -> bool:
    """FTS5's reading of a search (every word whole, the last also as a prefix), for
    SQLite builds without FTS5."""
    return text is not None and all(p.search(text) for p in _word_patterns(q))


def connect(paths: list[Path]) -> sqlite3.Connection:
    """A connection with each run's index attached read-only as r0, r1, ..."""
    conn = sqlite3.connect("file::memory:", uri=True)
    conn.create_function("words_match", 2, words_match, deterministic=True)
    for i, path in enumerate(paths):
        conn.execute(f"ATTACH DATABASE ? AS r{i}", (f"{path.resolve().as_uri()}?mode=ro",))
    return conn


def _match(q: str) -> str | None:
    """An FTS5 query from free text: every word, the last one also as a prefix."""
    words = _WORD.findall(q)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def _where(f: Filters, fts: bool, others: list[int]) -> tuple[str, str, list[Any], str]:
    """SQL joins and WHERE over `p` (the listed run's pairs), the WHERE's arguments, and the
    expression of the disagreement a `gap` sort orders by."""
    clauses: list[str] = []
    args: list[Any] = []
    joins = ""
    gap_expr = "p.gap"
    if f.score is not None:
        clauses.append("(p.score1 = ? OR p.score2 = ?)")
        args += [f.score, f.score]
    if f.category == UNCATEGORIZED:
        clauses.append("p.category IS NULL")
    elif f.category:
        clauses.append("p.category = ?")
        args.append(f.category)
    if f.scale is not None:
        clauses.append("p.issue_scale = ?")
        args.append(f.scale)
    for name, column in (("refusal", "refusals"), ("no_info", "no_info")):
        value = getattr(f, name)
        if value:
            clauses.append(f"p.{column} {FLAG_CHOICES[value]}")
    if f.status:
        clauses.append("p.status = ?")
        args.append(f.status)
    if f.failure:
        clauses.append("instr(' ' || p.failure || ' ', ' ' || ? || ' ') > 0")
        args.append(f.failure)
    if f.disagree == "orders":
        clauses.append("p.gap >= ?")
        args.append(f.gap)
    elif f.disagree == "runs" and others:
        # Any other run whose judge scored the pair differently (first judge order).
        gap_expr = (
            "MAX("
            + ", ".join(f"COALESCE(ABS(p.score1 - o{o}.score1), -1)" for o in others)
            + ", -1)"
        )
        clauses.append(f"{gap_expr} >= ?")
        args.append(f.gap)
    if f.q:
        search = f"r{f.run}.search"
        if fts:
            match = _match(f.q)
            if match is not None:
                clauses.append(f"p.id IN (SELECT rowid >> 2 FROM {search} WHERE search MATCH ?)")
                args.append(match)
        elif _WORD.search(f.q):
            # No FTS5: LIKE narrows by substring, words_match keeps FTS5's meaning.
            words = _WORD.findall(f.q)
            likes = " AND ".join("text LIKE ? ESCAPE '\\'" for _ in words)
            clauses.append(
                f"p.id IN (SELECT rowid >> 2 FROM {search} WHERE {likes} AND words_match(text, ?))"
            )
            args += ["%" + re.sub(r"([%_\\])", r"\\\1", w) + "%" for w in words]
            args.append(f.q)
    for o in others:
        joins += f" LEFT JOIN r{o}.pairs o{o} ON o{o}.id = p.id"
    return joins, (" WHERE " + " AND ".join(clauses) if clauses else ""), args, gap_expr


_ORDER = {
    "seq": "p.seq",
    "id": "p.id",
    "score": "p.score1 IS NULL, p.score1, p.seq",
}


def list_page(paths: list[Path], f: Filters, fts: bool) -> Page:
    """One page of the filtered list, and how many pairs match in all."""
    others = [i for i in range(len(paths)) if i != f.run]
    conn = connect(paths)
    try:
        joins, where, args, gap_expr = _where(f, fts, others)
        total = conn.execute(
            f"SELECT COUNT(*) FROM r{f.run}.pairs p{joins}{where}", args
        ).fetchone()[0]
        order = _ORDER.get(f.sort) or f"{gap_expr} DESC, p.seq"  # NULLs sort last in DESC
        other_cols = "".join(f", o{o}.status, o{o}.score1, o{o}.score2" for o in others)
        cur = conn.execute(
            "SELECT p.id, p.category, p.issue_scale, p.status, p.score1, p.score2, p.adj1, "
            f"p.adj2, p.refusals, p.no_info, p.failure, d.question{other_cols} "
            f"FROM r{f.run}.pairs p{joins} JOIN r{f.run}.pair_data d ON d.id = p.id{where} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, f.per_page, (f.page - 1) * f.per_page],
        )
        names = [c[0] for c in cur.description[:12]]
        rows = []
        for raw in cur:
            row = dict(zip(names, raw[:12], strict=True))
            row["others"] = [
                {
                    "run": o,
                    "status": raw[12 + 3 * k],
                    "score1": raw[13 + 3 * k],
                    "score2": raw[14 + 3 * k],
                }
                for k, o in enumerate(others)
            ]
            rows.append(row)
        return Page(rows, total, f)
    finally:
        conn.close()


def facets(path: Path) -> dict[str, Any]:
    """What the filter form offers for one run, with counts."""
    conn = connect([path])
    try:

        def grouped(sql: str) -> list[tuple[Any, int]]:
            return conn.execute(sql).fetchall()

        failures: dict[str, int] = {}
        for value, n in grouped(
            "SELECT failure, COUNT(*) FROM r0.pairs WHERE failure IS NOT NULL GROUP BY failure"
        ):
            for name in value.split():
                failures[name] = failures.get(name, 0) + n
        return {
            "categories": [
                (c if c is not None else UNCATEGORIZED, n)
                for c, n in grouped(
                    "SELECT category, COUNT(*) FROM r0.pairs GROUP BY category ORDER BY category"
                )
            ],
            "scales": grouped(
                "SELECT issue_scale, COUNT(*) FROM r0.pairs GROUP BY issue_scale ORDER BY 1"
            ),
            "statuses": dict(grouped("SELECT status, COUNT(*) FROM r0.pairs GROUP BY status")),
            "scores": dict(
                grouped(
                    "SELECT score1, COUNT(*) FROM r0.pairs WHERE score1 IS NOT NULL GROUP BY score1"
                )
            ),
            "failures": sorted(failures.items()),
            "both_orders": conn.execute(
                "SELECT EXISTS (SELECT 1 FROM r0.pairs WHERE score2 IS NOT NULL)"
            ).fetchone()[0],
            "failed_examples": grouped(
                "SELECT failure, MIN(id) FROM r0.pairs WHERE failure IS NOT NULL GROUP BY failure"
            ),
        }
    finally:
        conn.close()


def failure_groups(path: Path) -> list[dict[str, Any]]:
    """Pairs with a failed call, by failure class: count, the first pair and its error."""
    conn = connect([path])
    try:
        rows = conn.execute(
            "SELECT g.failure, g.n, g.first, p.error FROM (SELECT failure, COUNT(*) AS n, "
            "MIN(id) AS first FROM r0.pairs WHERE failure IS NOT NULL GROUP BY failure) g "
            "JOIN r0.pairs p ON p.id = g.first ORDER BY g.n DESC"
        ).fetchall()
    finally:
        conn.close()
    return [
        {
            "count": n,
            "stage": "judge" if (error or "").startswith("judge") else "generation",
            "class": failure,
            "http_status": None,
            "message": error or "",
            "example_pair_id": first,
        }
        for failure, n, first, error in rows
    ]
