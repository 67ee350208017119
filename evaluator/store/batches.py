"""Provider batches as the checkpoint records them (batch mode)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from evaluator.store.records import BatchRow
from evaluator.store.schema import BATCH_COLUMNS


class BatchesTable:
    """Store's reads and writes of the `batches` and `batch_requests` tables (mixed into
    Store). Writes run on the writer thread only, through StoreWriter.run."""

    _read: sqlite3.Connection | None
    _write: sqlite3.Connection | None

    has_table: Callable[[str], bool]  # Store's

    def batch_submitting(
        self, marker: str, provider: str, stage: str, requests: list[tuple[str, str]]
    ) -> int:
        """Record a batch about to be submitted with its (custom_id, call key) pairs; its id."""
        assert self._write is not None
        now = time.time()
        with self._write:
            cur = self._write.execute(
                "INSERT INTO batches (marker, provider, stage, state, n_requests, created_at, "
                "updated_at) VALUES (?, ?, ?, 'submitting', ?, ?, ?)",
                (marker, provider, stage, len(requests), now, now),
            )
            batch = cur.lastrowid
            self._write.executemany(
                "INSERT INTO batch_requests (batch, custom_id, key) VALUES (?, ?, ?)",
                [(batch, cid, key) for cid, key in requests],
            )
        assert batch is not None
        return batch

    def batch_update(
        self,
        batch: int,
        state: str,
        provider_batch_id: str | None = None,
        input_file_id: str | None = None,
        note: str | None = None,
    ) -> None:
        assert self._write is not None
        with self._write:
            self._write.execute(
                "UPDATE batches SET state = ?, provider_batch_id = COALESCE(?, provider_batch_id), "
                "input_file_id = COALESCE(?, input_file_id), note = COALESCE(?, note), "
                "updated_at = ? WHERE id = ?",
                (state, provider_batch_id, input_file_id, note, time.time(), batch),
            )

    # -- batches (reads) ----------------------------------------------------
    def open_batches(self, stage: str | None = None) -> list[BatchRow]:
        """Batches that may still owe results (not void), oldest first."""
        assert self._read is not None
        if not self.has_table("batches"):
            return []
        sql = f"SELECT {BATCH_COLUMNS} FROM batches WHERE state != 'void'"
        args: tuple[Any, ...] = ()
        if stage is not None:
            sql += " AND stage = ?"
            args = (stage,)
        return [BatchRow(*row) for row in self._read.execute(sql + " ORDER BY id", args)]

    def batch_unsettled(self, batch: int) -> list[tuple[str, str]]:
        """(custom_id, key) of a batch's requests whose call has no recorded outcome yet."""
        assert self._read is not None
        return self._read.execute(
            "SELECT r.custom_id, r.key FROM batch_requests r LEFT JOIN calls c ON c.key = r.key "
            "WHERE r.batch = ? AND (c.status IS NULL OR c.status NOT IN ('done', 'failed'))",
            (batch,),
        ).fetchall()

    def batch_counts(self) -> dict[str, tuple[int, int]]:
        """(batches, requests) by batch state (for `status`)."""
        assert self._read is not None
        if not self.has_table("batches"):
            return {}
        rows = self._read.execute(
            "SELECT state, COUNT(*), SUM(n_requests) FROM batches GROUP BY state"
        ).fetchall()
        return {k: (n, r or 0) for k, n, r in rows}
