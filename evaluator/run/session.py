"""One run from start to outputs: open the store, check endpoints, schedule, flush, report.

Everything the session owns is opened through one scope, an AsyncExitStack, in this order,
and closed in the reverse order on every path (an error, a return, Ctrl-C):

    the store (and the run directory's lock)      Store.close
    the session's GC settings                     session_gc
    the log filter keeping the run's keys out     redacted_logs
    the SIGINT/SIGTERM handlers                   RunSignals
    the managed servers (vLLM), if any            ServerFleet
    the Prometheus metrics server, if asked for   AppRunner.cleanup
    the report's side process                     ReportChild.close
    the scheduling phase, a nested AsyncExitStack closed before the outputs are written:
        both stages' clients                      EndpointPool / BatchStage / NoGeneration
        the session's record (last_session)       written once the writer has closed
        earlier runs' checkpoints (--reuse)       Store.close
        the checkpoint's writer                   StoreWriter.close (commits what is queued)
        batch stages' submitting and polling      Stage.stop
        the servers' failure callbacks            (unset)
        the signals' drain handler                Drain
        the event loop's lag monitor, progress    LoopLagMonitor.stop, Progress.stop

Each object that starts a task (the writer, the lag monitor, the progress display, the
batch stages, the pools) owns it and ends it in its close, which is on the stack.
Exit codes: evaluator.run.exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator import report, rundir, servers
from evaluator.config import RunConfig
from evaluator.costs import CostMeter, expected_calls
from evaluator.looplag import LoopLagMonitor
from evaluator.preflight import PreflightReport, run_preflight
from evaluator.progress import Progress, Resumed
from evaluator.report.child import ReportChild
from evaluator.run import prepare
from evaluator.run.exits import START_UP_ERRORS, Exit, RunResult, UserError, exit_for
from evaluator.run.finish import BadRowLog, finish, session_summary
from evaluator.run.outcomes import FINAL_FAILURES, RunStats
from evaluator.run.scheduler import Scheduler
from evaluator.run.signals import Drain, RunSignals
from evaluator.run.stages import Stage, activity, batch_modes, build_stages
from evaluator.sharding import expected_pairs
from evaluator.store import (
    CheckpointCorrupt,
    Store,
    StoreError,
    StoreIOError,
    StoreWriter,
    store_error,
)
from workers.gctune import session_gc
from workers.vllm_servers import ServerFleet, ServerStartError

log = logging.getLogger("evaluator")

# OSErrors that mean the run directory cannot be written (anything else is a bug: exit 1).
_DISK_ERRNOS = frozenset(
    (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
)


@dataclass
class RunOptions:
    """How this process runs (not what is evaluated): never stored, free to change on resume."""

    progress_interval: float | None = 10.0  # seconds between progress lines; None: quiet
    progress_mode: str = "auto"  # auto (bars on a terminal, else log lines) | bar | log
    drain_timeout: float = 30.0
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    metrics_host: str = "127.0.0.1"
    preflight: bool = True  # check models and request shape before the first paid call
    retry_failed: bool = False  # send again the calls that failed with a final class


async def execute(
    run_dir: Path,
    new_config: RunConfig | None,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> RunResult:
    """Run (or resume) the evaluation in `run_dir`; `overrides` adjust a stored config's
    throughput settings."""
    try:
        rundir.check_before_run(run_dir)  # outputs are never overwritten without a checkpoint
        store = Store.open(run_dir)
    except StoreIOError as exc:
        return _store_io_error(exc, run_dir)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    session = Session(run_dir, store, options or RunOptions())
    try:
        async with contextlib.AsyncExitStack() as scope:
            scope.callback(store.close)
            scope.enter_context(session_gc())
            return await session.run(scope, new_config, resume, overrides or {})
    except asyncio.CancelledError:
        if session.signals is None or not session.signals.count:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # ours: a signal outside the scheduling phase stops the run
        log.warning("interrupted; nothing is lost: resume with --resume")
        return RunResult(Exit.INTERRUPTED, None, None, run_dir)
    except sqlite3.Error as exc:  # a direct write of the session (config, meta) failed
        error = store_error(store.path, exc)
        if isinstance(error, CheckpointCorrupt):
            raise UserError(str(error)) from None
        return _store_io_error(error, run_dir)
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        return _store_io_error(StoreIOError(f"cannot write in {run_dir}: {exc}"), run_dir)


def _store_io_error(exc: StoreError, run_dir: Path) -> RunResult:
    log.error(
        "%s — nothing is lost: free space or fix the disk (or the directory's permissions), "
        "then run with --resume",
        exc,
    )
    return RunResult(Exit.STORE, None, None, run_dir)


class Session:
    """One run session in `run_dir` with its opened `store`; see the module's docstring."""

    def __init__(self, run_dir: Path, store: Store, options: RunOptions) -> None:
        self.run_dir = run_dir
        self.store = store
        self.options = options
        self.signals: RunSignals | None = None

    async def run(
        self,
        scope: contextlib.AsyncExitStack,
        new_config: RunConfig | None,
        resume: bool,
        overrides: dict[str, Any],
    ) -> RunResult:
        config, keys, cost, fleet, stored_pairs = prepare.open_run(
            scope, self.run_dir, self.store, new_config, resume, overrides
        )
        self.signals = scope.enter_context(RunSignals())
        if fleet is not None:
            log.info(
                "starting %s; waiting until they answer (logs in %s)",
                ", ".join(f"{len(g.settings.groups())} {g.stage} server(s)" for g in fleet.groups),
                self.run_dir / servers.SERVER_LOG_DIR,
            )
            try:
                await scope.enter_async_context(fleet)  # every server process stops on exit
            except ServerStartError as exc:  # the fleet has stopped what it started
                log.error("%s; nothing was sent", exc)  # (its log's tail: keys redacted)
                return RunResult(exit_for(exc, started=False), None, None, self.run_dir)
            config = servers.with_server_urls(config, fleet)
        config = batch_modes(config, self.store)
        stages = build_stages(config, self.store, keys, fleet, cost)
        metrics = await self._metrics(scope, config, stages, cost)
        # The report's side process starts with the session, at low priority, so that its
        # imports (pyarrow, matplotlib) use idle CPU now instead of adding to the run's end.
        side = ReportChild(
            self.run_dir, self.run_dir / report.RESULTS_TMP, config.judge_orders, background=True
        )
        scope.callback(side.close)  # a no-op once the report is written
        return await self._schedule(scope, config, stages, metrics, cost, side, fleet, stored_pairs)

    async def _metrics(
        self,
        scope: contextlib.AsyncExitStack,
        config: RunConfig,
        stages: list[Stage],
        cost: CostMeter,
    ) -> Any:
        """The Prometheus metrics and their HTTP server, when asked for (None otherwise)."""
        options = self.options
        if options.metrics_port is None:
            return None
        # Imported only when asked for: the HTTP server and prometheus_client cost start-up time.
        from evaluator.metrics.registry import RunMetrics
        from evaluator.metrics.server import start_server

        metrics = RunMetrics(secrets=tuple(s.key for s in stages if s.key))
        metrics.describe_run(config.model, config.judge_model, config.simulated)
        metrics.duplicated.set(self.store.possibly_duplicated())
        metrics.set_expected(expected_pairs(config))
        expected = expected_calls(expected_pairs(config), len(config.judge_orders))
        metrics.watch_cost(cost, lambda: expected)
        for stage in stages:
            stage.watch(metrics)
        try:
            server = await start_server(metrics, options.metrics_host, options.metrics_port)
        except OSError as exc:
            raise UserError(
                f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: {exc}"
            ) from None
        scope.push_async_callback(server.cleanup)
        log.info(
            "Prometheus metrics on http://%s:%d/metrics", options.metrics_host, options.metrics_port
        )
        return metrics

    async def _check(self, config: RunConfig, stages: list[Stage]) -> PreflightReport | RunResult:
        """The start-up check of both stages' endpoints (their clients entered); a RunResult
        when a stage cannot run (nothing was sent beyond the check's test calls)."""
        store, options = self.store, self.options
        try:
            for stage in stages:
                await stage.client.check()
            # A run that already finished needs no test call to be resumed: it sends nothing.
            finished = store.get_meta(report.FINISHED_META) == store.get_meta("config")
            return await run_preflight(
                config,
                {s.name: s.client for s in stages},
                {s.name: s.key for s in stages},
                probe=options.preflight and not (finished and not options.retry_failed),
            )
        except START_UP_ERRORS as exc:
            code = exit_for(exc, started=False)
            if code is Exit.RETRY_WAIT:
                log.error("preflight: %s; resume with --resume once that time has passed", exc)
            else:
                log.error("preflight: %s (nothing was sent beyond the start-up check)", exc)
            return RunResult(code, None, None, self.run_dir)

    async def _schedule(
        self,
        scope: contextlib.AsyncExitStack,
        config: RunConfig,
        stages: list[Stage],
        metrics: Any,
        cost: CostMeter,
        side: ReportChild,
        fleet: ServerFleet | None,
        stored_pairs: int | None,
    ) -> RunResult:
        """Check the endpoints, send the calls, then write the outputs (finish)."""
        store, run_dir, options = self.store, self.run_dir, self.options
        assert self.signals is not None
        phase = await scope.enter_async_context(contextlib.AsyncExitStack())
        by_name = {s.name: s for s in stages}
        for stage in stages:
            await phase.enter_async_context(stage.client)
        checked = await self._check(config, stages)
        if isinstance(checked, RunResult):
            return checked
        config = prepare.after_preflight(store, config, checked, stages)
        scheduler: Scheduler | None = None
        bad_rows = BadRowLog()
        ended: list[RunStats] = []  # the scheduler's stats once it has returned

        def record_session() -> None:
            # After the writer has committed, before the clients close (their endpoints'
            # figures are part of it); not when an error ends the session.
            if ended and writer.error is None:
                store.set_meta("last_session", session_summary(ended[0], lag, stages))

        phase.callback(record_session)

        def on_store_error(exc: BaseException) -> None:
            if scheduler is not None:
                scheduler.fail(exc)

        reuse = prepare.open_reuse(config.reuse, run_dir)
        for other in reuse:
            phase.callback(other.close)
        writer = StoreWriter(
            store, on_error=on_store_error, on_commit=metrics.commit if metrics else None
        )
        writer.start()
        phase.push_async_callback(writer.close)  # every outcome received is committed
        for stage in stages:
            phase.push_async_callback(stage.stop)  # before the writer closes
            await stage.start(writer)  # a batch stage re-attaches to this run's batches
        scheduler = Scheduler(
            config,
            store,
            writer,
            by_name["gen"].client,
            by_name["judge"].client,
            on_bad_row=bad_rows.log,
            reuse=reuse,
            metrics=metrics,
            cost=cost,
            retry_failed=options.retry_failed,
            stored_pairs=stored_pairs,
        )
        if fleet is not None:  # servers that keep dying stop the run (resumable)
            for group in fleet.groups:
                group.on_failed = scheduler.fail
            phase.callback(_forget_failures, fleet)
        drain = phase.enter_context(
            Drain(self.signals, scheduler.request_stop, options.drain_timeout)
        )
        lag = LoopLagMonitor(on_sample=metrics.loop_lag.set if metrics else None)
        lag.start()
        phase.push_async_callback(lag.stop)
        if options.progress_interval is not None:
            mode = options.progress_mode
            calls, pairs = store.progress_so_far(len(config.judge_orders), FINAL_FAILURES)
            progress = Progress(
                scheduler.stats,
                expected_pairs(config),
                len(config.judge_orders),
                mode=Progress.choose_mode() if mode == "auto" else mode,
                interval_s=options.progress_interval,
                cost=cost,
                resumed=Resumed(calls, pairs),
                activity=lambda: activity(*(s.client for s in stages)),
            )
            progress.start()
            phase.push_async_callback(progress.stop)
        try:
            stats = await scheduler.run(drain_timeout=options.drain_timeout)
        except asyncio.CancelledError:  # a second signal: stop at once
            stats = scheduler.stats
            stats.interrupted = True
        ended.append(stats)
        await phase.aclose()
        return finish(
            run_dir,
            config,
            store,
            writer,
            side,
            self.signals,
            stats,
            at_once=drain.at_once,
            bad_rows=bad_rows,
        )


def _forget_failures(fleet: ServerFleet) -> None:
    for group in fleet.groups:
        group.on_failed = None
