"""What can go wrong with a run directory's checkpoint, as error types, and how a failed
SQLite call or file operation maps to one of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


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
