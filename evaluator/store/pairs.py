"""The run's pairs as the checkpoint stores them (see evaluator.fingerprint)."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable
from typing import Any

import orjson


class PairsTable:
    """Store's reads and writes of the `pairs` table (mixed into Store)."""

    _read: sqlite3.Connection | None
    _write: sqlite3.Connection | None

    has_table: Callable[[str], bool]  # Store's

    def pair_count(self) -> int:
        assert self._read is not None
        if not self.has_table("pairs"):
            return 0
        return self._read.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]

    def pair_digest(self, pair_id: int) -> bytes | None:
        assert self._read is not None
        row = self._read.execute(
            "SELECT digest FROM pairs WHERE pair_id = ?", (pair_id,)
        ).fetchone()
        return row[0] if row else None

    def pair_row(self, pair_id: int) -> bytes | None:
        """A stored pair's row (uncompressed JSON), or None."""
        assert self._read is not None
        row = self._read.execute("SELECT row FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        return zlib.decompress(row[0]) if row else None

    def iter_pair_rows(self):
        """(pair_id, digest, row) of every stored pair in the run's order (row uncompressed)."""
        assert self._read is not None
        if not self.has_table("pairs"):
            return
        cur = self._read.execute("SELECT pair_id, digest, row FROM pairs ORDER BY seq")
        for pair_id, digest, row in cur:
            yield pair_id, digest, zlib.decompress(row)

    def iter_pair_ids(self):
        assert self._read is not None
        if self.has_table("pairs"):
            yield from (r[0] for r in self._read.execute("SELECT pair_id FROM pairs"))

    def clear_pairs(self, meta: dict[str, Any]) -> None:
        """A run starting afresh: pairs stored by an earlier start that recorded no call go;
        `meta` is set in the same transaction."""
        assert self._write is not None
        with self._write:
            self._write.execute("DELETE FROM pairs")
            self._write.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value",
                [(k, orjson.dumps(v).decode()) for k, v in meta.items()],
            )

    def renumber_pairs(self, order) -> None:
        """Give the stored pairs the positions of `order` (pair ids; merge: the file's order)."""
        assert self._write is not None
        with self._write:
            self._write.executemany(
                "UPDATE pairs SET seq = ? WHERE pair_id = ?", ((n, i) for n, i in enumerate(order))
            )
