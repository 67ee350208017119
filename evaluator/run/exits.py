"""How a run ends: one table of outcomes and their exit codes (for batch schedulers).

`Exit` names the codes and `MEANINGS` says what each means and what to do (the CLI's
`--help` prints it: `help_table`); `ERROR_EXITS` says which error ends a run with which
code, and `exit_for_run` which code a run that stopped without an error gets. The log
line that goes with each is written where the run ends (evaluator.run.session and
.finish), which knows what to tell the user (the run directory, what the checkpoint holds).
"""

from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator.breaker import CircuitOpen
from evaluator.dataset import DatasetError
from evaluator.preflight import PreflightError
from evaluator.store import CheckpointCorrupt, StoreError
from workers.base import FatalEndpointError, RetryWaitTooLong
from workers.client import EndpointUnreachable
from workers.vllm_servers import ServersFailed, ServerStartError

if TYPE_CHECKING:
    from evaluator.run.outcomes import RunStats


class Exit(enum.IntEnum):
    """The process's exit code (the module's docstring says what each means)."""

    OK = 0
    INTERNAL = 1
    USER = 2
    FATAL_ENDPOINT = 3
    PREFLIGHT = 4
    STORE = 5
    FAILED_PAIRS = 6
    BREAKER = 7
    MISCALIBRATED = 8  # `calibrate` only (evaluator.calibrate)
    RETRY_WAIT = 9  # a server asked to wait longer than --max-retry-wait; resumable later
    INTERRUPTED = 75
    BUDGET = 76  # stopped before a call could take the run past --max-cost; resumable


# What each code means and what to do next: the one place this is written (the CLI's
# --help prints it; docs/failures.md explains each at length).
MEANINGS: dict[Exit, str] = {
    Exit.OK: "finished: every pair has a verdict",
    Exit.INTERNAL: "internal error (a bug: please report it)",
    Exit.USER: "user error (flags, config, dataset, run directory); nothing was sent",
    Exit.FATAL_ENDPOINT: "an endpoint refused us for good (key, quota, billing), or managed "
    "servers kept dying: fix it, then --resume",
    Exit.PREFLIGHT: "the start-up check (preflight) failed: an endpoint is unreachable, does "
    "not serve the model, or refuses the request shape, or a managed server did not become "
    "ready; nothing was sent beyond test calls",
    Exit.STORE: "the checkpoint or the outputs could not be written (disk full, read-only "
    "directory, I/O error): fix, then --resume (or `report DIR`)",
    Exit.FAILED_PAIRS: "finished, but some pairs failed (summary.json `failures` says why): "
    "fix the cause, then --resume --retry-failed",
    Exit.BREAKER: "stopped early: a stage's calls kept failing (--max-failures): fix the "
    "cause, then --resume --retry-failed",
    Exit.MISCALIBRATED: "calibrate: every calibration set ran, at least one is outside the "
    "tolerance",
    Exit.RETRY_WAIT: "an endpoint asked to wait longer than --max-retry-wait (a daily limit, "
    "an exhausted quota window): --resume once that time has passed",
    Exit.INTERRUPTED: "interrupted (Ctrl-C, SIGTERM): in-flight calls finished and were "
    "recorded; --resume continues (during the final report: `report DIR` writes the rest)",
    Exit.BUDGET: "stopped before exceeding --max-cost: --resume with a larger --max-cost",
}


def help_table(width: int = 88) -> str:
    """MEANINGS as the `exit codes:` section of `--help`."""
    lines = ["exit codes:"]
    for code, text in MEANINGS.items():
        lines += textwrap.wrap(
            text, width, initial_indent=f"  {int(code):<4}", subsequent_indent=" " * 6
        )
    return "\n".join(lines) + "\n"


# The names other modules import (plain ints compare equal: `sys.exit` takes either).
EXIT_OK = Exit.OK
EXIT_INTERNAL = Exit.INTERNAL
EXIT_USER = Exit.USER
EXIT_FATAL_ENDPOINT = Exit.FATAL_ENDPOINT
EXIT_PREFLIGHT = Exit.PREFLIGHT
EXIT_STORE = Exit.STORE
EXIT_FAILED_PAIRS = Exit.FAILED_PAIRS
EXIT_BREAKER = Exit.BREAKER
EXIT_RETRY_WAIT = Exit.RETRY_WAIT
EXIT_INTERRUPTED = Exit.INTERRUPTED
EXIT_BUDGET = Exit.BUDGET


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback (exit 2)."""


@dataclass(frozen=True, slots=True)
class ErrorExit:
    """An error that ends a run, and its code. `start_up`: the code holds only for an error
    met before the first paid call (servers starting, the endpoints' check); later the same
    error is the pool's or the batch stage's to handle, so one that ends the run is a bug."""

    errors: tuple[type[BaseException], ...]
    code: Exit
    start_up: bool = False


# First match wins: the more specific error comes first (RetryWaitTooLong is a
# FatalEndpointError, CheckpointCorrupt a StoreError).
ERROR_EXITS: tuple[ErrorExit, ...] = (
    ErrorExit((UserError, CheckpointCorrupt, DatasetError), Exit.USER),
    ErrorExit((StoreError,), Exit.STORE),
    ErrorExit((RetryWaitTooLong,), Exit.RETRY_WAIT),
    ErrorExit((FatalEndpointError, ServersFailed), Exit.FATAL_ENDPOINT),
    ErrorExit((CircuitOpen,), Exit.BREAKER),
    ErrorExit((EndpointUnreachable, PreflightError, ServerStartError), Exit.PREFLIGHT, True),
)

# What the start-up check raises for a stage that cannot run (ERROR_EXITS gives the code).
START_UP_ERRORS: tuple[type[BaseException], ...] = (
    EndpointUnreachable,
    PreflightError,
    FatalEndpointError,
)


def exit_for(error: BaseException, *, started: bool) -> Exit:
    """The exit code of a run ended by `error`; `started`: paid calls may have been sent."""
    for rule in ERROR_EXITS:
        if isinstance(error, rule.errors) and not (started and rule.start_up):
            return rule.code
    return Exit.INTERNAL


def exit_for_run(stats: RunStats, summary: dict[str, Any]) -> Exit:
    """The exit code of a run that stopped without an error (its outputs are written)."""
    if stats.budget_exhausted:
        return Exit.BUDGET
    if stats.interrupted:
        return Exit.INTERRUPTED
    if stats.pairs_admitted == 0 and stats.bad_rows:
        return Exit.USER  # every row of the dataset was bad
    if not summary["all_pairs_have_verdicts"]:
        return Exit.FAILED_PAIRS
    return Exit.OK


@dataclass
class RunResult:
    exit_code: int
    summary: dict[str, Any] | None
    stats: RunStats | None
    run_dir: Path
