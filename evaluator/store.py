"""The run's checkpoint: one SQLite file per run directory.

It holds the run's config and every call's outcome, keyed by a content hash of
the request (pair id, role, exact request body). A call whose outcome is here
is never sent again.

Durability: WAL journal with `synchronous=FULL`: a commit returns once its WAL
frames are on the disk (one fsync per group commit, see StoreWriter), so what is
reported committed survives SIGKILL, a power cut and a filesystem that fails
under the run. (With NORMAL a commit only reached the page cache: an ext4 that
aborted mid-run lost ~80 commits already reported, intents among them, so those
calls were sent again without being counted as possibly paid twice.) A commit
whose own fsync fails is *in doubt*: the kernel may still have written it; so is
one made while the filesystem turned read-only (its fsync is then a no-op that
reports success). The writer stops at once and says so; that one commit's
intents were never sent, so a resume that finds them counts them as possibly
paid twice (never fewer).

Readers (`status`, `compare`, `--reuse`, merge's shards) open the file read-only
and never create or change it; every opener rejects a file that is empty, not
SQLite, or fails SQLite's `quick_check` (CheckpointCorrupt), and says so when
the directory cannot be written (StoreIOError).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import re
import sqlite3
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

DB_NAME = "checkpoint.sqlite"
PROBES_META = "preflight_usage"  # usage of the start-up test calls: [[stage, usage], ...]
PROBE_ROLE_PREFIX = "preflight:"  # iter_usage's role for them: "preflight:gen", "preflight:judge"
LOCK_NAME = ".lock"
SCHEMA_VERSION = "1"
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# Readers check a larger file only as they read it (quick_check reads it all: ~0.7 s/GB).
QUICK_CHECK_MAX_BYTES = 256 << 20
COMMITS_META = "commits"  # group commits so far: which one was in doubt after an I/O error

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    pair_id INTEGER NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,          -- started | done | failed | interrupted
    body_sha TEXT NOT NULL,        -- sha256 of the exact bytes sent
    content TEXT,
    reasoning TEXT,
    finish_reason TEXT,
    usage TEXT,
    attempts INTEGER NOT NULL,
    error_class TEXT,
    error TEXT,
    latency_s REAL,
    updated_at REAL NOT NULL,
    citations TEXT,                -- JSON list of cited web sources (web search), or NULL
    http_status INTEGER            -- a failed call's last HTTP status (NULL: none, or no answer)
);
CREATE INDEX IF NOT EXISTS calls_pair ON calls(pair_id);
CREATE TABLE IF NOT EXISTS bad_rows (location TEXT PRIMARY KEY, reason TEXT NOT NULL);
-- Provider batches (batch mode). A row and its request keys are committed before anything
-- is sent, so a restart re-attaches to a batch instead of submitting its requests again.
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    marker TEXT NOT NULL UNIQUE,   -- also in the batch's metadata and in each custom_id
    provider TEXT NOT NULL,        -- openai | openai-responses | anthropic
    stage TEXT NOT NULL,           -- gen | judge
    state TEXT NOT NULL,           -- submitting | submitted | ended | void
    provider_batch_id TEXT,
    input_file_id TEXT,
    n_requests INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS batch_requests (
    batch INTEGER NOT NULL,        -- batches.id
    custom_id TEXT NOT NULL,
    key TEXT NOT NULL,             -- calls.key
    PRIMARY KEY (batch, custom_id)
);
CREATE INDEX IF NOT EXISTS batch_requests_key ON batch_requests(key);
-- The run's pairs as read from the dataset, stored as each is admitted: the dataset's
-- identity is its content (evaluator.fingerprint), and `report` needs no dataset file.
CREATE TABLE IF NOT EXISTS pairs (
    pair_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,          -- position among the run's pairs (file order)
    digest BLOB NOT NULL,          -- blake2b-128 of the uncompressed row
    row BLOB NOT NULL              -- the pair's columns (and answers) as JSON, zlib-compressed
);
CREATE INDEX IF NOT EXISTS pairs_seq ON pairs(seq);
"""


class StoreError(Exception):
    """The run directory or its store cannot be used."""


class CheckpointCorrupt(StoreError):
    """The checkpoint file is damaged or is not a checkpoint: its records cannot be trusted."""


class StoreIOError(StoreError):
    """The run directory or its checkpoint cannot be written (disk full, read-only, I/O error)."""


# SQLite's (extended) result codes by what they mean for the run directory.
_CORRUPT_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_IO_CODES = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")


def store_error(path: Path, exc: sqlite3.Error | OSError) -> StoreError:
    """One clear error for a failed SQLite call (or file operation) on the checkpoint `path`."""
    if isinstance(exc, OSError):
        return StoreIOError(f"cannot write in {path.parent}: {exc.strerror or exc}")
    name = getattr(exc, "sqlite_errorname", None) or ""
    if name.startswith(_CORRUPT_CODES):
        return CheckpointCorrupt(corrupt_message(path, str(exc)))
    if name.startswith(_IO_CODES):
        return StoreIOError(f"cannot write the checkpoint {path}: {exc}")
    return StoreError(f"{path} is not a usable checkpoint: {exc}")


def corrupt_message(path: Path, detail: str) -> str:
    return (
        f"{path} is not a usable checkpoint: it is damaged ({detail}), so its records cannot "
        "be trusted; nothing was read or changed. Restore the file from a copy, or start the "
        "run again with another --out"
    )


class CommitInDoubt(OSError):
    """SQLite reported a commit done, but the filesystem had turned read-only meanwhile."""


def commit_in_doubt(exc: BaseException) -> bool:
    """Whether a failed commit may be on the disk anyway, or a commit reported done may not
    be: its fsync failed (or SQLite does not say which step did) after the kernel had taken
    its bytes, or it ran on a filesystem that turned read-only (CommitInDoubt)."""
    if isinstance(exc, CommitInDoubt):
        return True
    name = getattr(exc, "sqlite_errorname", None)
    return isinstance(exc, sqlite3.Error) and (name in (None, "SQLITE_IOERR") or "FSYNC" in name)


def pair_digest(row: bytes) -> bytes:
    """The identity of one pair's row (evaluator.fingerprint.record): 16 bytes of blake2b."""
    return hashlib.blake2b(row, digest_size=16).digest()


@dataclass(slots=True)
class CallRecord:
    key: str
    pair_id: int
    role: str  # gen_for | gen_against | judge_forward | judge_reverse
    status: str  # started | done | failed | interrupted
    body_sha: str
    content: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    error_class: str | None = None
    error: str | None = None
    latency_s: float | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    http_status: int | None = None


@dataclass(slots=True)
class BatchRow:
    """One provider batch as the store knows it (see the `batches` table)."""

    id: int
    marker: str
    provider: str
    stage: str
    state: str
    provider_batch_id: str | None
    input_file_id: str | None
    n_requests: int
    created_at: float


_BATCH_COLUMNS = (
    "id, marker, provider, stage, state, provider_batch_id, input_file_id, n_requests, created_at"
)


@dataclass(frozen=True, slots=True)
class Intent:
    key: str
    pair_id: int
    role: str
    body_sha: str


@dataclass(frozen=True, slots=True)
class PairRow:
    """One admitted pair for the `pairs` table: its position and its row (uncompressed)."""

    pair_id: int
    seq: int
    row: bytes


@dataclass(frozen=True, slots=True)
class MetaValue:
    """A meta key to set in the writer's next commit (ordered with the calls around it)."""

    key: str
    value: Any


_COLUMNS = (
    "key pair_id role status body_sha content reasoning finish_reason usage "
    "attempts error_class error latency_s updated_at citations http_status"
).split()
_OPTIONAL_TABLES = ("bad_rows", "batches", "batch_requests", "pairs")


def check_file(path: Path) -> int | None:
    """The checkpoint file's size (None: there is none), after the checks that need no
    SQLite: a file that is not empty must start with SQLite's header (CheckpointCorrupt)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size and head != SQLITE_MAGIC:
        raise CheckpointCorrupt(corrupt_message(path, "it is not an SQLite file"))
    return size


class Store:
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
        self._tables: frozenset[str] = frozenset(("meta", "calls", *_OPTIONAL_TABLES))
        self._select = ", ".join(_COLUMNS)

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
                store._write.executescript(_SCHEMA)
                _add_missing_columns(store._write)
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
        self._select = ", ".join(c if c in have else f"NULL AS {c}" for c in _COLUMNS)

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
            rec = _record_from_row(row)
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
                    f"INSERT OR REPLACE INTO calls ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})",
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

    # -- pairs (see evaluator.fingerprint) ------------------------------------
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

    def get_call(self, key: str) -> CallRecord | None:
        assert self._read is not None
        row = self._read.execute(
            f"SELECT {self._select} FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return _record_from_row(row) if row else None

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

    def absorb(self, other: Path) -> int:
        """Copy every call and bad input row of the checkpoint file `other` into this store
        (merging shards, whose calls never share a key); returns the calls copied."""
        assert self._write is not None
        conn = self._write
        conn.execute("ATTACH DATABASE ? AS other", (str(other),))  # not inside a transaction
        try:
            # A shard written by an older version lacks the newer columns: they stay NULL.
            theirs = {r[1] for r in conn.execute("PRAGMA other.table_info(calls)")}
            cols = ", ".join(c for c in _COLUMNS if c in theirs)
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

    def bad_rows(self) -> list[tuple[str, str]]:
        assert self._read is not None
        if not self.has_table("bad_rows"):
            return []
        return self._read.execute("SELECT location, reason FROM bad_rows").fetchall()

    # -- batches (writes: from the writer thread only, through StoreWriter.run) --
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
        sql = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state != 'void'"
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


_NUMBERS = re.compile(r"\d+")


@dataclass(slots=True)
class FailureGroup:
    """Failed calls that failed the same way: the first message is kept as the example."""

    stage: str  # "generation" | "judge"
    error_class: str
    http_status: int | None
    message: str
    count: int
    example_pair_id: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.error_class,
            "stage": self.stage,
            "http_status": self.http_status,
            "message": self.message,
            "count": self.count,
            "example_pair_id": self.example_pair_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FailureGroup:
        return cls(
            d["stage"], d["class"], d["http_status"], d["message"], d["count"], d["example_pair_id"]
        )

    def line(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status else ""
        return (
            f"{self.count} x {self.stage} {self.error_class}{status}: {self.message} "
            f"(e.g. pair {self.example_pair_id})"
        )


class FailureGroups:
    """Streaming tally of failed calls into FailureGroups."""

    def __init__(self) -> None:
        self._groups: dict[tuple[Any, ...], FailureGroup] = {}

    def add(
        self,
        role: str,
        error_class: str | None,
        http_status: int | None,
        message: str | None,
        pair_id: int,
    ) -> None:
        stage = "judge" if role.startswith("judge") else "generation"
        message = message or ""
        key = (stage, error_class, http_status, _NUMBERS.sub("N", message)[:300])
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = FailureGroup(
                stage, error_class or "unknown", http_status, message[:500], 1, pair_id
            )
        else:
            group.count += 1

    def top(self, limit: int | None = None) -> list[FailureGroup]:
        ranked = sorted(self._groups.values(), key=lambda g: -g.count)
        return ranked if limit is None else ranked[:limit]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Checkpoints written before a column existed get it (NULL for their rows)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    for name, kind in (("citations", "TEXT"), ("http_status", "INTEGER")):
        if name not in have:
            conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")


def _record_from_row(row: tuple[Any, ...]) -> CallRecord:
    d = dict(zip(_COLUMNS, row, strict=False))
    d.pop("updated_at")
    d["usage"] = orjson.loads(d["usage"]) if d["usage"] else {}
    d["citations"] = orjson.loads(d["citations"]) if d["citations"] else []
    return CallRecord(**d)


@dataclass(slots=True)
class _Job:
    fn: Callable[[Store], Any]
    fut: asyncio.Future


class StoreWriter:
    """The single writer: intents and outcomes are queued and committed in batches.

    Whatever has queued up while the previous commit ran goes into the next
    one (group commit), so batches grow with load and a quiet run still commits
    at once. `intent()` returns only after its batch is committed: a request
    never leaves before the store knows it was started.

    If a commit fails (disk full, I/O error) the writer stops, fails every
    waiting intent and calls `on_error`; the store keeps its last good commit,
    and `committed` is exactly what that holds of this session's outcomes. If the
    failed commit's fsync was what failed, that commit is in doubt (`in_doubt`:
    its outcomes and intents; the intents' calls were never sent). Any other
    failure of the writer (a bug) stops the run the same way: it never hangs.
    """

    def __init__(
        self,
        store: Store,
        max_batch: int = 1024,
        on_error: Callable[[BaseException], None] | None = None,
        on_commit: Callable[[float, float], None] | None = None,
    ) -> None:
        """`on_commit(seconds, oldest_age_s)` is told each commit's duration and lag (metrics)."""
        self._store = store
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._on_error = on_error
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.committed = 0  # call outcomes committed by this writer
        self.commits = int(store.get_meta(COMMITS_META) or 0)  # the store's count, as of now
        self.in_doubt: tuple[int, int] | None = None  # (outcomes, intents) of a commit in doubt
        self.error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    def put(self, item: CallRecord | tuple[str, str] | PairRow | MetaValue) -> None:
        """Queue an outcome, a bad input row, an admitted pair or a meta value for the next
        commit."""
        if self.error is None:
            self._queue.put_nowait((time.monotonic(), item))

    async def run(self, fn: Callable[[Store], Any]) -> Any:
        """Run `fn(store)` on the writer thread, in commit order; returns once it has committed.

        For the few writes that are not call outcomes (batch bookkeeping): one writer
        thread owns the write connection, so they go through it too.
        """
        if self.error is not None:
            raise StoreError(f"the checkpoint cannot be written: {self.error}")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((time.monotonic(), _Job(fn, done)))
        return await done

    async def intent(self, intent: Intent) -> None:
        """Record that a call is about to be sent; returns once that is committed."""
        if self.error is not None:
            raise StoreError(f"the checkpoint cannot be written: {self.error}")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((time.monotonic(), (intent, done)))
        await done

    def describe(self) -> str:
        """What the checkpoint holds of this session after a failure (for the error line)."""
        text = (
            f"{self.committed} call outcome{'s' if self.committed != 1 else ''} committed in "
            f"this session, through commit #{self.commits}"
        )
        if self.in_doubt is not None:
            outcomes, intents = self.in_doubt
            text += (
                f"; commit #{self.commits + 1} ({outcomes} outcomes, {intents} intents) failed "
                "while being made durable, so it may or may not be there: its calls were not "
                "sent, and a resume that finds them counts them as possibly paid twice"
            )
        return text

    async def _run(self) -> None:
        intents: list[tuple[Intent, asyncio.Future]] = []
        jobs: list[_Job] = []
        try:
            stop = False
            while not stop:
                stamped = [await self._queue.get()]
                while len(stamped) < self._max_batch and not self._queue.empty():
                    stamped.append(self._queue.get_nowait())
                oldest: float | None = None
                records: list[CallRecord] = []
                bad: list[tuple[str, str]] = []
                pairs: list[PairRow] = []
                meta: list[MetaValue] = []
                intents, jobs = [], []
                for stamp in stamped:  # one pass: this runs for every call of the run
                    if stamp is None:
                        stop = True
                        continue
                    if oldest is None:
                        oldest = stamp[0]  # queued in order: the first is the oldest
                    item = stamp[1]
                    if isinstance(item, CallRecord):
                        records.append(item)
                    elif isinstance(item, PairRow):
                        pairs.append(item)
                    elif isinstance(item, _Job):
                        jobs.append(item)
                    elif isinstance(item, MetaValue):
                        meta.append(item)
                    elif isinstance(item[0], Intent):
                        intents.append(item)
                    else:
                        bad.append(item)
                if not (records or bad or intents or jobs or pairs or meta):
                    continue
                began = time.monotonic()
                try:
                    await asyncio.to_thread(
                        self._store.write_batch, records, bad, [i for i, _ in intents], pairs, meta
                    )
                except Exception as exc:  # noqa: BLE001 - whatever it is, the run must stop
                    if commit_in_doubt(exc):
                        self.in_doubt = (len(records), len(intents))
                    self._fail(exc, intents, jobs)
                    return
                self.commits += 1
                self.committed += len(records)
                # Committed: the calls may leave now (before the jobs, whose failure must not
                # turn a committed intent into one reported as failed).
                for _, fut in intents:
                    if not fut.done():
                        fut.set_result(None)
                intents = []
                for job in jobs:
                    try:
                        result = await asyncio.to_thread(job.fn, self._store)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(exc, [], jobs)
                        return
                    if not job.fut.done():
                        job.fut.set_result(result)
                jobs = []
                if self._on_commit is not None and oldest is not None:
                    self._on_commit(time.monotonic() - began, began - oldest)
        except BaseException as exc:
            # The loop itself failed (or was cancelled at shutdown): nobody may wait forever.
            if self.error is None:
                self._fail(exc, intents, jobs, notify=not isinstance(exc, asyncio.CancelledError))
            raise

    def _fail(
        self,
        exc: BaseException,
        intents: list[tuple[Intent, asyncio.Future]],
        jobs: list[_Job] = (),
        notify: bool = True,
    ) -> None:
        io = isinstance(exc, sqlite3.Error | OSError)
        if io:
            cause: BaseException = store_error(self._store.path, exc)
            if not isinstance(cause, CheckpointCorrupt):
                name = getattr(exc, "sqlite_errorname", None)
                detail = f"{exc} ({name})" if name else str(exc)
                cause = StoreError(f"cannot write the checkpoint {self._store.path}: {detail}")
            self.error = cause
        else:  # a bug, or a value SQLite cannot store: not the disk's fault
            cause = RuntimeError(f"the checkpoint writer failed: {exc!r}")
            self.error = StoreError(str(cause))
        futures = [fut for _, fut in intents] + [job.fut for job in jobs]
        while not self._queue.empty():  # nothing more can be saved; wake every waiter
            stamped = self._queue.get_nowait()
            item = stamped[1] if stamped is not None else None
            if isinstance(item, tuple) and isinstance(item[0], Intent):
                futures.append(item[1])
            elif isinstance(item, _Job):
                futures.append(item.fut)
        for fut in futures:
            if not fut.done():
                fut.set_exception(self.error)
        if self._on_error is not None and notify:
            self._on_error(cause)

    async def close(self) -> None:
        """Commit everything queued so far, then stop."""
        if self._task is None:
            return
        if self.error is None:
            self._queue.put_nowait(None)
        # Shielded: a Ctrl-C arriving now must not abandon queued outcomes.
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - already reported through on_error and `error`
            pass
        self._task = None
