"""What `status`, progress, the cost meter and the summary read from a run's calls."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from evaluator.store.failures import FailureGroup, FailureGroups
from evaluator.store.schema import LOCK_NAME, PROBE_ROLE_PREFIX, PROBES_META


class CallTallies:
    """Store's counts and summaries of the `calls` table (mixed into Store)."""

    _read: sqlite3.Connection | None

    has_table: Callable[[str], bool]  # Store's

    get_meta: Callable[[str], Any]  # Store's
    set_meta: Callable[[str, Any], None]  # Store's
    run_dir: Path

    def iter_usage(self):
        """(role, usage) of every call with a recorded outcome, and of the start-up test calls
        (for the run's cost so far)."""
        assert self._read is not None
        cur = self._read.execute(
            "SELECT role, usage FROM calls WHERE status IN ('done', 'failed') AND usage IS NOT NULL"
        )
        for role, usage in cur:
            parsed = orjson.loads(usage) if usage else {}
            if parsed:
                yield role, parsed
        for stage, usage in self.get_meta(PROBES_META) or []:
            if usage:
                yield f"{PROBE_ROLE_PREFIX}{stage}", usage

    def add_probe_usage(self, probes: list[tuple[str, dict[str, Any]]]) -> None:
        """Record the usage of start-up test calls (role "gen"/"judge", usage) for the cost."""
        if probes:
            self.set_meta(PROBES_META, [*(self.get_meta(PROBES_META) or []), *probes])

    def failure_groups(self, limit: int | None = None) -> list[FailureGroup]:
        """Failed calls grouped by stage, class, HTTP status and message (numbers in the
        message ignored, so "has 9120 input tokens" and "has 9388" group), largest first."""
        assert self._read is not None
        groups = FailureGroups()
        cur = self._read.execute(
            "SELECT role, error_class, http_status, error, pair_id FROM calls "
            "WHERE status = 'failed' ORDER BY pair_id"
        )
        for role, error_class, http_status, error, pair_id in cur:
            groups.add(role, error_class, http_status, error, pair_id)
        return groups.top(limit)

    def possibly_duplicated(self) -> int:
        return int(self.get_meta("possibly_duplicated_calls") or 0)

    def counts(self) -> dict[str, int]:
        assert self._read is not None
        rows = self._read.execute(
            "SELECT role || ':' || status, COUNT(*) FROM calls GROUP BY role, status"
        ).fetchall()
        return {k: n for k, n in rows}

    def pair_counts(self) -> dict[str, int]:
        """Distinct pairs with a judge answer, and with a failed call (for `status`)."""
        assert self._read is not None
        judged, failed = self._read.execute(
            "SELECT COUNT(DISTINCT CASE WHEN role LIKE 'judge%' AND status = 'done' THEN pair_id END),"
            " COUNT(DISTINCT CASE WHEN status = 'failed' THEN pair_id END) FROM calls"
        ).fetchone()
        return {"judged": judged, "failed": failed}

    def progress_so_far(self, orders: int, final: frozenset[str]) -> tuple[dict[str, int], int]:
        """For progress after a resume: ({stage: calls with an outcome}, pairs finished).

        A pair is finished when its `orders` judge calls have an outcome, or a call of it
        failed with a class in `final` (one that stands on resume)."""
        assert self._read is not None
        gen, judge = self._read.execute(
            "SELECT SUM(role LIKE 'gen%'), SUM(role LIKE 'judge%') FROM calls "
            "WHERE status IN ('done', 'failed')"
        ).fetchone()
        marks = ", ".join("?" * len(final)) or "NULL"
        (pairs,) = self._read.execute(
            "SELECT COUNT(*) FROM (SELECT pair_id FROM calls GROUP BY pair_id HAVING "
            "SUM(role LIKE 'judge%' AND status IN ('done', 'failed')) >= ? OR "
            f"SUM(status = 'failed' AND error_class IN ({marks})) > 0)",
            (orders, *sorted(final)),
        ).fetchone()
        return {"gen": gen or 0, "judge": judge or 0}, pairs or 0

    def holder(self) -> int | None:
        """The pid of the evaluator running in this directory, or None if none is."""
        path = self.run_dir / LOCK_NAME
        try:
            fh = open(path)  # noqa: SIM115 - read only: a reader creates nothing
        except FileNotFoundError:
            return None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                text = fh.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None

    def pair_ids(self) -> list[int]:
        """Every pair with a recorded call."""
        assert self._read is not None
        return [r[0] for r in self._read.execute("SELECT DISTINCT pair_id FROM calls")]

    def bad_rows(self) -> list[tuple[str, str]]:
        assert self._read is not None
        if not self.has_table("bad_rows"):
            return []
        return self._read.execute("SELECT location, reason FROM bad_rows").fetchall()
