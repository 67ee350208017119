"""The checkpoint file's names, tables and columns, and the checks a file gets before SQLite
opens it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from evaluator.store.errors import CheckpointCorrupt, StoreError, corrupt_message

DB_NAME = "checkpoint.sqlite"
PROBES_META = "preflight_usage"  # usage of the start-up test calls: [[stage, usage], ...]
PROBE_ROLE_PREFIX = "preflight:"  # iter_usage's role for them: "preflight:gen", "preflight:judge"
LOCK_NAME = ".lock"
SCHEMA_VERSION = "1"
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# Readers check a larger file only as they read it (quick_check reads it all: ~0.7 s/GB).
QUICK_CHECK_MAX_BYTES = 256 << 20
COMMITS_META = "commits"  # group commits so far: which one was in doubt after an I/O error

SCHEMA = """
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


COLUMNS = (
    "key pair_id role status body_sha content reasoning finish_reason usage "
    "attempts error_class error latency_s updated_at citations http_status"
).split()
OPTIONAL_TABLES = ("bad_rows", "batches", "batch_requests", "pairs")

BATCH_COLUMNS = (
    "id, marker, provider, stage, state, provider_batch_id, input_file_id, n_requests, created_at"
)


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


def add_missing_columns(conn: sqlite3.Connection) -> None:
    """Checkpoints written before a column existed get it (NULL for their rows)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    for name, kind in (("citations", "TEXT"), ("http_status", "INTEGER")):
        if name not in have:
            conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
