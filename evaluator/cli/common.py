"""What the commands share: printing, the event loop, the run directory, a run's ending."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from evaluator import report
from evaluator.cli.parser import DEFAULT_OUT
from evaluator.run import RunOptions, RunResult, UserError
from evaluator.store import (
    DB_NAME,
    CheckpointCorrupt,
    FailureGroup,
    Store,
    StoreError,
    corrupt_message,
    store_error,
)

LAST_RUN = Path("runs/.last-run")  # which run a bare `--resume` continues
log = logging.getLogger("evaluator")


def emit(text: str = "", file: Any = None) -> None:
    """print(), except that a reader who went away (`... | head`) ends the output quietly:
    stdout then points at /dev/null, so neither this nor the exit's flush raises."""
    try:
        print(text, file=file or sys.stdout, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (file or sys.stdout).fileno())
        os.close(devnull)


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the stdlib loop works, only slower
        return asyncio.run(coro)
    return uvloop.run(coro)


def resolve_out(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.resume and LAST_RUN.is_file():
        return Path(LAST_RUN.read_text(encoding="utf-8").strip())
    return DEFAULT_OUT


def remember(out: Path) -> None:
    try:
        LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
        LAST_RUN.write_text(str(out.resolve()) + "\n", encoding="utf-8")
    except OSError as exc:  # a convenience only: never fail a run for it
        log.warning("could not record %s: %s", LAST_RUN, exc)


def options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        progress_interval=None if args.quiet else args.progress_interval,
        drain_timeout=args.drain_timeout,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        progress_mode=args.progress,
        preflight=not getattr(args, "no_preflight", False),
        retry_failed=getattr(args, "retry_failed", False),
    )


def finish(result: RunResult, print_report: bool) -> int:
    """A run's ending on the terminal: its figures (or whole report), failures, next step."""
    if result.summary is not None:
        md = (result.run_dir / "report.md").read_text(encoding="utf-8")
        s = result.summary
        if print_report:
            emit(md)
        else:
            if s.get("simulated"):
                emit("SIMULATION: these figures come from the simulated backend, not a model")
            emit(
                f"PAC {report._fmt(s['pac'])}  REF {report._fmt(s['ref'])}  NINF {report._fmt(s['ninf'])}  "
                f"(valid {s['n_valid']}, invalid {s['n_invalid']}, failed {s['n_failed']}, "
                f"pending {s['n_pending']})"
            )
        failures = s.get("failures") or []
        if failures:
            emit("failed calls, most frequent first (all of them in summary.json `failures`):")
            for group in failures[: report.SHOWN_FAILURE_GROUPS]:
                emit("  " + FailureGroup.from_dict(group).line())
        if s.get("possibly_duplicated_calls"):
            emit(
                f"calls possibly paid twice (in flight when the run was interrupted): "
                f"{s['possibly_duplicated_calls']}"
            )
        emit(f"outputs in {result.run_dir}/ (summary.json, results.jsonl, report.md)")
    if result.stats is not None:
        st = result.stats
        log.info(
            "this session: %d calls sent, %d failed, %d judge re-asks, %d pairs already complete",
            st.calls_sent,
            st.calls_failed,
            st.judge_reasks,
            st.pairs_already_complete,
        )
    if result.exit_code == 76:
        log.warning(
            "stopped before exceeding --max-cost: resume with a larger budget, e.g.  "
            "python -m evaluator run --resume --out %s --max-cost USD",
            result.run_dir,
        )
    if result.exit_code == 75:
        log.warning(
            "interrupted: resume with  python -m evaluator --resume --out %s", result.run_dir
        )
    return result.exit_code


def damaged_checkpoints(dirs: list[Path | None]) -> None:
    """compare and agreement read summary.json (a run without a checkpoint is fine); a
    checkpoint that is there but damaged is named, not silently skipped."""
    for d in dirs:
        if d is not None and (d / DB_NAME).exists():
            try:
                Store.open(d, create=False, lock=False).close()
            except CheckpointCorrupt as exc:
                raise UserError(str(exc)) from None
            except StoreError:
                pass


@contextlib.contextmanager
def damage_is_user_error(store: Store) -> Iterator[None]:
    """Damage that SQLite finds while reading (a large file is not checked whole at open):
    one clear line, exit 2, instead of a traceback."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(store_error(store.path, exc), CheckpointCorrupt) or "malformed" in str(exc):
            raise UserError(corrupt_message(store.path, str(exc))) from None
        raise
