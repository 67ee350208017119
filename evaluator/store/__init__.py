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

Modules: `schema` (tables, names, file checks), `records` (rows), `errors`, `db` (Store:
open, lock, calls; `pairs`, `batches` and `tallies` hold its other tables and counts),
`writer` (StoreWriter) and `failures` (failed calls grouped).
"""

from evaluator.store.db import Store
from evaluator.store.errors import (
    CheckpointCorrupt,
    CommitInDoubt,
    StoreError,
    StoreIOError,
    commit_in_doubt,
    corrupt_message,
    store_error,
)
from evaluator.store.failures import FailureGroup, FailureGroups
from evaluator.store.records import BatchRow, CallRecord, Intent, MetaValue, PairRow, pair_digest
from evaluator.store.schema import (
    COMMITS_META,
    DB_NAME,
    LOCK_NAME,
    PROBE_ROLE_PREFIX,
    PROBES_META,
    QUICK_CHECK_MAX_BYTES,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
    check_file,
)
from evaluator.store.writer import StoreWriter

__all__ = [
    "COMMITS_META",
    "DB_NAME",
    "LOCK_NAME",
    "PROBE_ROLE_PREFIX",
    "PROBES_META",
    "QUICK_CHECK_MAX_BYTES",
    "SCHEMA_VERSION",
    "SQLITE_MAGIC",
    "BatchRow",
    "CallRecord",
    "CheckpointCorrupt",
    "CommitInDoubt",
    "FailureGroup",
    "FailureGroups",
    "Intent",
    "MetaValue",
    "PairRow",
    "Store",
    "StoreError",
    "StoreIOError",
    "StoreWriter",
    "check_file",
    "commit_in_doubt",
    "corrupt_message",
    "pair_digest",
    "store_error",
]
