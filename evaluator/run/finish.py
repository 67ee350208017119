"""After the calls: the session's record, the outputs, and the exit code with its log line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from evaluator import report
from evaluator.breaker import CircuitOpen
from evaluator.config import RunConfig
from evaluator.dataset import BadRow, DatasetError
from evaluator.looplag import LoopLagMonitor
from evaluator.report.child import ReportChild
from evaluator.run.exits import Exit, RunResult, UserError, exit_for, exit_for_run
from evaluator.run.outcomes import RunStats
from evaluator.run.signals import RunSignals, stop_on_signal
from evaluator.run.stages import Stage
from evaluator.store import Store, StoreError, StoreWriter

log = logging.getLogger("evaluator")

# The log line of a run stopped by an error, by its exit code ({error}, {run_dir},
# {committed}: what the checkpoint holds, {hint}: more advice where there is some).
_STOPPED = {
    Exit.USER: "{error}",
    Exit.STORE: (
        "{error} — the checkpoint holds everything committed before this ({committed}); free "
        "space or fix the disk, then run with --resume"
    ),
    Exit.RETRY_WAIT: (
        "stopping: {error}. Nothing is lost: run with --resume once that time has passed "
        "(or give a larger --max-retry-wait to wait it out)"
    ),
    Exit.FATAL_ENDPOINT: "stopping: {error} — fix this, then run with --resume (nothing is lost)",
    Exit.BREAKER: (
        "stopped early: {error}. Fix the cause, then send the failed calls again with  "
        "python -m evaluator --resume --out {run_dir} --retry-failed  (nothing else is "
        "re-sent){hint}"
    ),
    Exit.INTERNAL: "internal error: {error!r}",
}


def finish(
    run_dir: Path,
    config: RunConfig,
    store: Store,
    writer: StoreWriter,
    side: ReportChild,
    signals: RunSignals,
    stats: RunStats,
    *,
    at_once: bool,
    bad_rows: BadRowLog,
) -> RunResult:
    """The outputs (unless the checkpoint failed or a second signal asked to stop at once)
    and the run's exit code. Synchronous: nothing of the session is still running."""
    fatal = stats.fatal
    if isinstance(fatal, StoreError):  # the checkpoint cannot be written (or trusted)
        return _stopped(fatal, run_dir, stats, writer)
    if at_once:  # "stop at once": the outputs can be rebuilt with `report DIR`
        return RunResult(Exit.INTERRUPTED, None, stats, run_dir)
    try:
        with stop_on_signal(signals) as stop:
            summary = report.build_run_outputs(
                run_dir, config, store, side, should_stop=stop.is_set
            )
    except report.ReportInterrupted as exc:
        log.warning(
            "%s; the checkpoint holds every outcome: `python -m evaluator report %s` writes "
            "the outputs",
            exc,
            run_dir,
        )
        return RunResult(Exit.INTERRUPTED, None, stats, run_dir)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        log.error(
            "cannot write the outputs in %s: %s — the checkpoint is intact; free space, "
            "then run `python -m evaluator report %s`",
            run_dir,
            exc,
            run_dir,
        )
        return RunResult(Exit.STORE, None, stats, run_dir)
    bad_rows.summarise(stats.bad_rows)
    if fatal is not None:
        return _stopped(fatal, run_dir, stats, writer, summary)
    code = exit_for_run(stats, summary)
    if code is Exit.USER:
        log.error(
            "no valid pair in %s: all %d rows were bad (the first reasons are above)",
            config.data,
            stats.bad_rows,
        )
    elif code is Exit.FAILED_PAIRS:
        log.error(
            "finished, but %d pair(s) failed and %d have no outcome: they are left out of the "
            "metrics (reasons below and in summary.json `failures`). Fix the cause, then "
            "python -m evaluator --resume --out %s --retry-failed",
            summary["n_failed"],
            summary["n_pending"],
            run_dir,
        )
    return RunResult(code, summary, stats, run_dir)


def _stopped(
    fatal: BaseException,
    run_dir: Path,
    stats: RunStats,
    writer: StoreWriter,
    summary: dict[str, Any] | None = None,
) -> RunResult:
    """A run stopped by an error: its exit code (evaluator.run.exits) and log line."""
    code = exit_for(fatal, started=True)
    hint = _request_setting_hint(fatal, run_dir) if isinstance(fatal, CircuitOpen) else ""
    committed = writer.describe() if code is Exit.STORE else ""
    line = _STOPPED.get(code, _STOPPED[Exit.INTERNAL])
    log.error("%s", line.format(error=fatal, run_dir=run_dir, committed=committed, hint=hint))
    return RunResult(code, summary, stats, run_dir)


def _request_setting_hint(fatal: CircuitOpen, run_dir: Path) -> str:
    """When the failures say the model name is wrong, a resume cannot fix it: say how."""
    if fatal.http_status == 404 and "model" in fatal.message.lower():
        return (
            ". If the model name itself is wrong, it is part of every request: start a new "
            f"run with the right name and --reuse {run_dir} (every answer already paid for "
            "is copied, not sent again)"
        )
    return ""


def session_summary(stats: RunStats, lag: LoopLagMonitor, stages: list[Stage]) -> dict[str, Any]:
    """What this session did, for summary.json: calls, client health, endpoint behaviour."""
    wall = time.monotonic() - stats.started
    cpu = time.process_time() - stats.started_cpu
    batches = {s.label: s.client.summary() for s in stages if s.batched}
    return {
        **({"batches": batches} if batches else {}),
        "wall_s": round(wall, 3),
        "calls_sent": stats.calls_sent,
        "calls_per_s": round(stats.calls_sent / wall, 2) if wall > 0 else None,
        # The client's own cost, steadier than calls/s on a shared machine.
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(1000 * cpu / stats.calls_sent, 4) if stats.calls_sent else None,
        "calls_reused": stats.calls_reused,
        "judge_reasks": stats.judge_reasks,
        "tokens_in": stats.tokens_in,
        "tokens_out": stats.tokens_out,
        "estimated_cost_usd": round(stats.cost_usd, 6),
        "estimated_cost_by_stage_usd": {k: round(v, 6) for k, v in stats.cost.items()},
        "budget_exhausted": stats.budget_exhausted,
        "pairs_already_complete": stats.pairs_already_complete,
        **lag.summary(),
        "endpoints": {s.label: s.endpoint_summary() for s in stages},
    }


class BadRowLog:
    """Bad input rows in the log: the first few with their reason, then one count."""

    SHOWN = 5

    def __init__(self) -> None:
        self.count = 0

    def log(self, bad: BadRow) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            log.warning("skipped bad input row %s", bad)
        elif self.count == self.SHOWN + 1:
            log.warning("more bad input rows: only a count is logged from here on")

    def summarise(self, total: int) -> None:
        if total > self.SHOWN:
            log.warning(
                "%d bad input rows in all were skipped (each with its reason in the "
                "checkpoint's bad_rows table; the count is in summary.json n_bad_rows)",
                total,
            )
