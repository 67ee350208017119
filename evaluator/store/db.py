"""Store: the checkpoint file of one run directory, its lock, and its calls."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from evaluator.store.batches import BatchesTable
from evaluator.store.errors import (
    CheckpointCorrupt,
    CommitInDoubt,
    StoreError,
    StoreIOError,
    corrupt_message,
    store_error,
)
from evaluator.store.pairs import PairsTable
from evaluator.store.records import (
    CallRecord,
    Intent,
    MetaValue,
    PairRow,
    pair_digest,
    record_from_row,
)
from evaluator.store.schema import (
    COLUMNS,
    COMMITS_META,
    DB_NAME,
    LOCK_NAME,
    OPTIONAL_TABLES,
    QUICK_CHECK_MAX_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    add_missing_columns,
    check_file,
)
from evaluator.store.tallies import CallTallies


class Store(PairsTable, BatchesTable, CallTallies):
    """Owns the SQLite file and the run directory's lock.

    Two connections: `_read` for the event loop's lookups, `_write` used only
    by the single writer thread, so reads never wait on a batch commit (WAL).
    A read-only store has `_read` alone.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME
        self._lock_fh: Any = None
        self._read: sqlite3.Connection | None = None
        self._write: sqlite3.Connection | None = None
        self._tables: frozenset[str] = frozenset(("meta", "calls", *OPTIONAL_TABLES))
        self._select = ", ".join(COLUMNS)

    @property
    def writable(self) -> bool:
        return self._write is not None

    @classmethod
    def open(
        cls,
        run_dir: Path,
        *,
        create: bool = True,
        lock: bool = True,
        readonly: bool | None = None,
    ) -> Store:
        """The store of `run_dir`; `create=False`: the run must exist.

        `readonly` (by default when neither `create` nor `lock`: a reader such as `status`)
        opens the file read-only: nothing is created or changed. Every opener checks the
        file (see check_file; writers always run quick_check, readers up to
        QUICK_CHECK_MAX_BYTES). Raises CheckpointCorrupt, StoreIOError or StoreError.
        """
        if readonly is None:
            readonly = not create and not lock
        store = cls(run_dir)
        if not run_dir.exists():
            if not create:
                raise StoreError(f"no run in {run_dir}: the directory does not exist")
            try:
                run_dir.mkdir(parents=True)
            except OSError as exc:
                raise StoreIOError(f"cannot create the run directory {run_dir}: {exc}") from None
        size = check_file(store.path)
        if size is None and not create:
            raise StoreError(f"no run in {run_dir}: {DB_NAME} is missing")
        if size == 0 and (readonly or not create):
            raise StoreError(f"no run in {run_dir}: {store.path} is empty (0 bytes)")
        if lock:
            store._acquire_lock()
        try:
            if readonly:
                store._read = store._connect_readonly()
                store._inspect_schema()
            else:
                store._read = store._connect()
                store._write = store._connect(check_same_thread=False)
            if size and (not readonly or size <= QUICK_CHECK_MAX_BYTES):
                store.quick_check()
            if not readonly:
                store._write.executescript(SCHEMA)
                add_missing_columns(store._write)
                store._write.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
                store._write.commit()
        except sqlite3.Error as exc:
            store.close()
            raise store_error(store.path, exc) from None
        except StoreError:
            store.close()
            raise
        return store

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=check_same_thread)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # see the module's docstring: durability
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return conn
        except sqlite3.OperationalError as exc:
            wal = self.path.with_name(DB_NAME + "-wal")
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN" or wal.exists():
                raise
        # A read-only directory: SQLite cannot make its WAL index beside a checkpoint that
        # was closed cleanly (no -wal file). Nothing can be writing there: read it as is.
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)

    def _inspect_schema(self) -> None:
        """What a read-only store has to work with: a file written by an older version may
        lack tables and columns that a writer would add (and a reader may not)."""
        assert self._read is not None
        tables = {
            r[0] for r in self._read.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not {"meta", "calls"} <= tables:
            raise StoreError(f"{self.path} holds no run (it is not a checkpoint of this evaluator)")
        self._tables = frozenset(tables)
        have = {r[1] for r in self._read.execute("PRAGMA table_info(calls)")}
        self._select = ", ".join(c if c in have else f"NULL AS {c}" for c in COLUMNS)

    def has_table(self, name: str) -> bool:
        return name in self._tables

    def quick_check(self) -> None:
        """SQLite's structural check of the whole file (CheckpointCorrupt if it fails)."""
        assert self._read is not None
        rows = self._read.execute("PRAGMA quick_check(3)").fetchall()
        if rows != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in rows)
            raise CheckpointCorrupt(corrupt_message(self.path, f"SQLite's quick_check: {detail}"))

    def _acquire_lock(self) -> None:
        try:
            self._lock_fh = open(self.run_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the run
        except OSError as exc:
            raise store_error(self.path, exc) from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise StoreError(
                f"{self.run_dir} is in use by another evaluator (lock held); "
                "wait for it to finish or use another --out"
            ) from None
        try:
            self._lock_fh.seek(0)
            self._lock_fh.truncate()
            self._lock_fh.write(f"{os.getpid()}\n")
            self._lock_fh.flush()
        except OSError as exc:
            self._release_lock()
            raise store_error(self.path, exc) from None

    def _release_lock(self) -> None:
        fh, self._lock_fh = self._lock_fh, None
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            try:
                fh.close()
            except OSError:  # a pid that could not be flushed (disk full): nothing to keep
                pass

    def close(self) -> None:
        for conn in (self._read, self._write):
            if conn is not None:
                conn.close()
        self._read = self._write = None
        self._release_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        assert self._read is not None
        row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        assert self._write is not None
        self._write.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, orjson.dumps(value).decode()),
        )
        self._write.commit()

    # -- calls --------------------------------------------------------------
    def has_calls(self) -> bool:
        """Whether any call is recorded (False for a fresh run)."""
        assert self._read is not None
        return self._read.execute("SELECT 1 FROM calls LIMIT 1").fetchone() is not None

    def calls_for_pair(self, pair_id: int) -> dict[str, CallRecord]:
        """Latest record per role for one pair (keys are unique per request content)."""
        assert self._read is not None
        cur = self._read.execute(f"SELECT {self._select} FROM calls WHERE pair_id = ?", (pair_id,))
        out: dict[str, CallRecord] = {}
        for row in cur:
            rec = record_from_row(row)
            out[rec.key] = rec
        return out

    def write_batch(
        self,
        records: list[CallRecord],
        bad_rows: list[tuple[str, str]] = (),
        intents: list[Intent] = (),
        pairs: list[PairRow] = (),
        meta: list[MetaValue] = (),
    ) -> None:
        """One transaction for a batch (called from the writer thread only); it also counts
        the commit (COMMITS_META), so which commit was in doubt after an I/O error can be told."""
        assert self._write is not None
        now = time.time()
        with self._write:
            if pairs:
                # Hashed and compressed here, on the writer thread: both release the GIL.
                self._write.executemany(
                    "INSERT OR REPLACE INTO pairs (pair_id, seq, digest, row) VALUES (?, ?, ?, ?)",
                    [
                        (p.pair_id, p.seq, pair_digest(p.row), zlib.compress(p.row, 1))
                        for p in pairs
                    ],
                )
            if intents:
                # Intent before send: the call is marked started; its outcome replaces the row.
                self._write.executemany(
                    "INSERT INTO calls (key, pair_id, role, status, body_sha, attempts, updated_at) "
                    "VALUES (?, ?, ?, 'started', ?, 0, ?) ON CONFLICT(key) DO UPDATE SET "
                    "status = 'started', updated_at = excluded.updated_at",
                    [(i.key, i.pair_id, i.role, i.body_sha, now) for i in intents],
                )
            if records:
                self._write.executemany(
                    f"INSERT OR REPLACE INTO calls ({', '.join(COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(COLUMNS))})",
                    [
                        (
                            r.key,
                            r.pair_id,
                            r.role,
                            r.status,
                            r.body_sha,
                            r.content,
                            r.reasoning,
                            r.finish_reason,
                            orjson.dumps(r.usage).decode(),
                            r.attempts,
                            r.error_class,
                            r.error,
                            r.latency_s,
                            now,
                            orjson.dumps(r.citations).decode() if r.citations else None,
                            r.http_status,
                        )
                        for r in records
                    ],
                )
            if bad_rows:
                self._write.executemany("INSERT OR REPLACE INTO bad_rows VALUES (?, ?)", bad_rows)
            for m in meta:
                self._write.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value",
                    (m.key, orjson.dumps(m.value).decode()),
                )
            self._write.execute(
                "INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO UPDATE SET "
                "value = CAST(value AS INTEGER) + 1",
                (COMMITS_META,),
            )
        self._still_writable()

    def _still_writable(self) -> None:
        """After a commit: a filesystem that turned read-only during it (ext4 after an I/O
        error) makes its fsync a no-op that reports success (the kernel treats a read-only
        filesystem as clean), so the commit may be lost: it is in doubt. A filesystem still
        writable now was writable when the fsync ran (read-only after an error is for good).
        Seen on ext4 `remount,abort` (tests/test_chaos.py): a commit reported done was
        missing after the remount."""
        try:
            flags = os.statvfs(self.run_dir).f_flag
        except OSError:
            return
        if flags & os.ST_RDONLY:
            raise CommitInDoubt(
                errno.EROFS, "the filesystem turned read-only while a commit was made durable"
            )

    def settle_interrupted(self) -> int:
        """At start-up: calls started but never finished may have been paid. Count them once.

        They become `interrupted` (re-sent like any missing call) and are added
        to the run's `possibly_duplicated_calls`; the number is returned.
        """
        assert self._write is not None
        with self._write:
            n = self._write.execute(
                "UPDATE calls SET status = 'interrupted' WHERE status = 'started'"
            ).rowcount
            if n:
                self._write.execute(
                    "INSERT INTO meta VALUES ('possibly_duplicated_calls', ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                    (str(n), n),
                )
        return n

    def get_call(self, key: str) -> CallRecord | None:
        assert self._read is not None
        row = self._read.execute(
            f"SELECT {self._select} FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return record_from_row(row) if row else None

    def absorb(self, other: Path) -> int:
        """Copy every call and bad input row of the checkpoint file `other` into this store
        (merging shards, whose calls never share a key); returns the calls copied."""
        assert self._write is not None
        conn = self._write
        conn.execute("ATTACH DATABASE ? AS other", (str(other),))  # not inside a transaction
        try:
            # A shard written by an older version lacks the newer columns: they stay NULL.
            theirs = {r[1] for r in conn.execute("PRAGMA other.table_info(calls)")}
            cols = ", ".join(c for c in COLUMNS if c in theirs)
            with conn:
                n = conn.execute(
                    f"INSERT INTO calls ({cols}) SELECT {cols} FROM other.calls"
                ).rowcount
                conn.execute("INSERT OR IGNORE INTO bad_rows SELECT * FROM other.bad_rows")
                has_pairs = conn.execute(
                    "SELECT 1 FROM other.sqlite_master WHERE type='table' AND name='pairs'"
                ).fetchone()
                if has_pairs:  # positions are set by the caller (renumber_pairs)
                    conn.execute(
                        "INSERT OR IGNORE INTO pairs (pair_id, seq, digest, row) "
                        "SELECT pair_id, seq, digest, row FROM other.pairs"
                    )
        finally:
            conn.execute("DETACH DATABASE other")
        return n
