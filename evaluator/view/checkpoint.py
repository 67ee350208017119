"""A run's checkpoint, read without writing: the viewer never creates or changes a file in
the run directory, and never takes the run's lock, so a run can start or resume under it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from evaluator.store import DB_NAME, CallRecord

# The calls columns a CallRecord holds, in its field order (updated_at is not one).
_FIELDS = (
    "key pair_id role status body_sha content reasoning finish_reason usage "
    "attempts error_class error latency_s citations http_status"
).split()


class ViewError(Exception):
    """A directory the viewer cannot show; the message says which and why."""


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection to a checkpoint that writes nothing beside it.

    A run that is writing keeps its `-wal` file: then we read as any SQLite reader does
    (mode=ro, through the run's own -shm). Without a -wal file nobody is writing, and
    mode=ro would create -wal and -shm files next to the checkpoint and leave them there;
    immutable=1 reads the file as it is, with no side files and no locks. Connections are
    short-lived (one refresh or one page), so a run starting meanwhile is seen at the next.
    """
    if not path.is_file():
        raise ViewError(f"{path.parent} holds no run: {path.name} is missing")
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=10, check_same_thread=False
        )
        conn.execute("SELECT 1 FROM calls LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ViewError(f"{path} is not a readable checkpoint: {exc}") from None
    return conn


class CheckpointReader:
    """The reads the viewer needs, each on a fresh read-only connection."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = connect_ro(self.path)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def meta(conn: sqlite3.Connection, key: str) -> Any:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    @staticmethod
    def max_rowid(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]

    @staticmethod
    def changed_pairs(conn: sqlite3.Connection, after_rowid: int) -> tuple[set[int], int]:
        """Pairs with a call written after `after_rowid`, and the newest rowid.

        An outcome is written with INSERT OR REPLACE, and SQLite gives the new row a rowid
        above every existing one (it is chosen before the old row is deleted), so a range
        scan on rowid finds every outcome written since the last look, cheaply."""
        rows = conn.execute(
            "SELECT pair_id, rowid FROM calls WHERE rowid > ?", (after_rowid,)
        ).fetchall()
        return {r[0] for r in rows}, max((r[1] for r in rows), default=after_rowid)

    @staticmethod
    def records(conn: sqlite3.Connection, pair_ids: list[int]) -> dict[int, dict[str, CallRecord]]:
        """Every recorded call of these pairs, by pair and call key."""
        have = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
        # Checkpoints older than a column lack it; Store.open would add it, we may not.
        cols = ", ".join(c if c in have else f"NULL AS {c}" for c in _FIELDS)
        out: dict[int, dict[str, CallRecord]] = {i: {} for i in pair_ids}
        for start in range(0, len(pair_ids), 500):  # SQLite's bound-parameter limit
            chunk = pair_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {cols} FROM calls WHERE pair_id IN ({marks})", chunk):
                d = dict(zip(_FIELDS, row, strict=True))
                d["usage"] = orjson.loads(d["usage"]) if d["usage"] else {}
                d["citations"] = orjson.loads(d["citations"]) if d["citations"] else []
                rec = CallRecord(**d)
                out[rec.pair_id][rec.key] = rec
        return out
