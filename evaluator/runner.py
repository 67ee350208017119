"""One run from start to outputs: open the store, check endpoints, schedule, flush, report.

Exit codes (documented in the README for batch schedulers):
    0   finished; every pair has an outcome
    1   internal error (a bug: please report it)
    2   user error: bad flags, config, dataset or run directory; nothing was sent
    3   an endpoint refused us for good (auth, quota, billing), or every managed server
        of a stage kept dying: fix it, then --resume
    4   the start-up check failed: an endpoint is unreachable, does not serve the model,
        or refuses the run's request shape, or a managed server did not become ready;
        nothing was sent beyond the preflight's test calls
    5   the checkpoint or the outputs could not be written (disk full, read-only directory,
        I/O error): fix, then --resume (or `report DIR` for the outputs)
    6   finished, but some pairs failed (reasons in summary.json `failures`): fix the
        cause, then --resume --retry-failed
    7   stopped early: a stage's calls kept failing (the circuit breaker, --max-failures):
        fix the cause, then --resume --retry-failed
    9   an endpoint asked to wait longer than --max-retry-wait (Retry-After, a rate-limit
        reset: a daily limit, an exhausted quota window): --resume once that time has passed
    75  interrupted (SIGINT/SIGTERM): in-flight calls finished and were recorded; --resume continues
        (during the final report: the file being written is finished; `report DIR` writes the rest)
    76  stopped before exceeding --max-cost: --resume with a larger budget
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator import fingerprint, report, rundir, servers
from evaluator.batch_stage import BatchSettings, BatchStage
from evaluator.breaker import CircuitOpen
from evaluator.config import ConfigError, RunConfig, load_dotenv, request_differences, stage_key
from evaluator.costs import CostMeter, expected_calls
from evaluator.dataset import (
    ANSWER_COLUMNS,
    BadRow,
    DatasetError,
    describe_source,
    has_answer_columns,
    iter_pairs,
)
from evaluator.identity import identity
from evaluator.looplag import LoopLagMonitor
from evaluator.preflight import PreflightError, PreflightReport, run_preflight
from evaluator.progress import Activity, Progress, Resumed
from evaluator.report.child import ReportChild
from evaluator.scheduler import FINAL_FAILURES, NoGeneration, RunStats, Scheduler
from evaluator.secrets import check_urls, redacted_logs
from evaluator.sharding import expected_pairs
from evaluator.store import (
    CheckpointCorrupt,
    Store,
    StoreError,
    StoreIOError,
    StoreWriter,
    store_error,
)
from workers.base import FatalEndpointError, RetryBudget, RetryWaitTooLong
from workers.batch_api import batch_api_for
from workers.gctune import session_gc
from workers.openai_compat import EndpointConfig, EndpointUnreachable
from workers.pool import EndpointPool, LimitsRegistry, PoolConfig
from workers.server_aware import FollowSettings
from workers.vllm_servers import ServerFleet, ServerSettingsError, ServersFailed, ServerStartError

if TYPE_CHECKING:
    from evaluator.metrics import RunMetrics

log = logging.getLogger("evaluator")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_FATAL_ENDPOINT = 3
EXIT_PREFLIGHT = 4
EXIT_STORE = 5
EXIT_FAILED_PAIRS = 6
EXIT_BREAKER = 7
EXIT_RETRY_WAIT = 9  # a server asked to wait longer than --max-retry-wait; resumable later
EXIT_INTERRUPTED = 75
EXIT_BUDGET = 76  # stopped before a call could take the run past --max-cost; resumable


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


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


@dataclass
class RunResult:
    exit_code: int
    summary: dict[str, Any] | None
    stats: RunStats | None
    run_dir: Path


def prepare_config(
    run_dir: Path,
    store: Store,
    new: RunConfig | None,
    resume: bool,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """The config this run uses, checked against what the run directory already holds.

    `overrides` are settings given on a bare `--resume`, applied to the stored config.
    """
    stored_raw = store.get_meta("config")
    if stored_raw is None:
        outputs = rundir.outputs_in(run_dir)
        if outputs:  # outputs that this checkpoint did not produce and cannot rebuild
            raise UserError(
                str(rundir.refuse_overwrite(run_dir, outputs, "its checkpoint holds no run"))
            )
        if resume and new is None:
            raise UserError(f"nothing to resume in {run_dir}: no run was started there")
        if new is None:
            raise UserError("no run config given")
        return new
    try:
        stored = RunConfig.from_dict(stored_raw)
    except (ConfigError, TypeError) as exc:
        raise UserError(f"{run_dir} holds a run config this version cannot read: {exc}") from None
    if not resume and store.counts():
        raise UserError(
            f"{run_dir} already holds a run (model {stored.model!r}); "
            "add --resume to continue it, or choose another --out"
        )
    if not resume:
        return new  # the earlier start recorded no call: nothing to protect
    if new is None:
        if not overrides:
            return stored
        # Managed-server flags adjust the stored [model.vllm] / [judge.vllm] tables; a launch
        # command alone adjusts only the stages that have servers.
        given = dict(overrides)
        for k in ("vllm", "judge_vllm"):
            table = given.pop(k, None)
            stored_table = getattr(stored, k)
            if table is not None and (stored_table is not None or set(table) != {"command"}):
                given[k] = {**(stored_table or {}), **table}
        if (
            "base_url" in given
            and "judge_base_url" not in given
            and stored.judge_base_url == stored.base_url
            and stored.judge_vllm is None
        ):
            given["judge_base_url"] = given["base_url"]  # the judge shared the model's endpoints
        try:
            new = dataclasses.replace(stored, **given)
        except TypeError as exc:
            raise UserError(f"cannot apply the settings given to the stored run: {exc}") from None
    diffs = request_differences(stored, new)
    if fingerprint.tracked(store) and not _local_file(stored.data).exists():
        # The dataset is known by its content (checked before anything is sent), not by
        # its path: a file that was moved resumes with --data NEW_PATH.
        diffs = [d for d in diffs if not d.startswith("data:")]
    if diffs:
        raise UserError(
            "refusing to resume: these settings would change the requests of the run in "
            f"{run_dir}: " + "; ".join(diffs) + ". To keep every answer already paid for "
            f"under new settings, start a new run (another --out) with --reuse {run_dir}"
        )
    return new


def _local_file(source: str) -> Path:
    """A dataset source as a path (the sample and hub sources are never "gone")."""
    return Path(__file__) if source == "sample" or source.startswith("hf:") else Path(source)


def _pool(
    name: str,
    urls: list[str],
    key: str | None,
    config: RunConfig,
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    budget: RetryBudget,
    shared: LimitsRegistry,
    secrets: tuple[str, ...] = (),
    managed: bool = False,
) -> EndpointPool:
    """One stage's endpoints; caps and rate limits apply to each endpoint. `secrets`: every
    key of the run, kept out of this stage's answers and messages.

    No `concurrency` given: endpoints whose servers publish vLLM metrics follow their
    load (`managed`: the evaluator started them, so a missing page is worth a warning);
    a number is a fixed cap, as it always was."""
    follow = None
    if concurrency is None:
        follow = FollowSettings(managed=managed)
        concurrency = follow.ceiling
    # The stage's wire format and model: the judge pool is the one named "judge ...".
    judge = name.startswith("judge")
    provider = config.judge_provider if judge else config.provider
    endpoints = [
        EndpointConfig(
            base_url=url,
            api_key=key,
            name=name,
            concurrency=concurrency,
            rpm=rpm,
            tpm=tpm,
            timeout_s=config.timeout_s,
            provider=provider,
            model=config.judge_model if judge else config.model,
            ca_bundle=config.ca_bundle,
            max_response_bytes=int(config.max_response_mb * 1024 * 1024),
            secrets=secrets,
        )
        for url in urls
    ]
    return EndpointPool(
        endpoints,
        PoolConfig(
            name=name,
            max_attempts=config.max_attempts,
            backoff_base_s=config.backoff_base_s,
            retry_budget=budget,
            max_retry_wait_s=config.max_retry_wait_s,
        ),
        shared,
        follow=follow,
    )


def _managed(urls: list[str], fleet: ServerFleet | None) -> bool:
    """Whether every URL of a stage is a server the evaluator started (vLLM: it has metrics)."""
    started = {url for group in fleet.groups for url in group.urls} if fleet is not None else set()
    return bool(urls) and set(urls) <= started


def _batch_stage(
    stage: str,
    name: str,
    provider: str,
    urls: list[str],
    key: str | None,
    config: RunConfig,
    store: Store,
    budget: RetryBudget,
    secrets: tuple[str, ...] = (),
) -> BatchStage:
    """A stage in batch mode: the provider's Batch API at the stage's (single) endpoint."""
    api = batch_api_for(
        provider,
        urls[0],
        key,
        name=name,
        backoff_base_s=config.backoff_base_s,
        timeout_s=config.timeout_s,
        ca_bundle=config.ca_bundle,
        max_retry_wait_s=config.max_retry_wait_s,
        secrets=secrets,
    )
    max_requests = min(config.batch_max_requests or api.max_requests, api.max_requests)
    max_bytes = api.max_bytes
    if config.batch_max_mb is not None:
        max_bytes = min(max_bytes, int(config.batch_max_mb * 1024 * 1024))
    settings = BatchSettings(
        max_requests=max_requests,
        max_bytes=max_bytes,
        capacity=config.batch_capacity,
        window_s=config.batch_window_s,
        idle_s=config.batch_idle_s,
        poll_s=config.batch_poll_s,
        max_attempts=config.max_attempts,
        budget=budget,
    )
    return BatchStage(api, stage, store, settings)


def _modes(config: RunConfig, store: Store) -> RunConfig:
    """A stage with batches still owing results is re-attached in batch mode, whatever the
    mode asked for now: sending those calls online would pay for them twice."""
    for stage, name in (("gen", "mode"), ("judge", "judge_mode")):
        if getattr(config, name) == "batch":
            continue
        owing = [r for r in store.open_batches(stage) if store.batch_unsettled(r.id)]
        if owing:
            log.warning(
                "%d %s batch(es) of this run still owe results: the %s stage stays in batch "
                "mode until they are read",
                len(owing),
                owing[0].provider,
                "judge" if stage == "judge" else "generation",
            )
            config = dataclasses.replace(config, **{name: "batch"})
    return config


def _session_summary(
    stats: RunStats,
    lag: LoopLagMonitor,
    gen: EndpointPool | BatchStage,
    judge: EndpointPool | BatchStage,
) -> dict[str, Any]:
    """What this session did, for summary.json: calls, client health, endpoint behaviour."""
    wall = time.monotonic() - stats.started
    cpu = time.process_time() - stats.started_cpu
    batches = {
        stage: client.summary()
        for stage, client in (("generation", gen), ("judge", judge))
        if isinstance(client, BatchStage)
    }
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
        "endpoints": {
            stage: [
                {
                    "base_url": ep.name,
                    "sent": ep.stats.sent,
                    "ok": ep.stats.ok,
                    "rate_limited": ep.stats.rate_limited,
                    "transient": ep.stats.transient,
                    "connection_failures": ep.stats.connection_failures,
                    "concurrency_limit": round(ep.concurrency.limit, 2),
                    "concurrency_cuts": ep.concurrency.cuts,
                    "rpm": ep.limits.rpm,
                    "tpm": ep.limits.tpm,
                    "healthy": ep.healthy,
                    # Server-aware concurrency: whether the limit followed the server's
                    # vLLM metrics, and the server's last figures (for `status`).
                    **(ep.follow.summary() if ep.follow else {"follows_server": False}),
                }
                for ep in pool.endpoints
            ]
            for stage, pool in (("generation", gen), ("judge", judge))
        },
    }


def _open_reuse(dirs: list[str], run_dir: Path) -> list[Store]:
    """Earlier runs' checkpoints, read-only (no lock: they may be in use elsewhere)."""
    stores = []
    for d in dirs:
        path = Path(d)
        if path.resolve() == run_dir.resolve():
            continue
        try:
            stores.append(Store.open(path, create=False, lock=False))
        except StoreError as exc:
            for st in stores:
                st.close()
            raise UserError(f"--reuse {d}: {exc}") from None
    return stores


async def execute(
    run_dir: Path,
    new_config: RunConfig | None,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> RunResult:
    """Run (or resume) the evaluation in `run_dir`; `overrides` adjust a stored config's throughput settings."""
    try:
        rundir.check_before_run(run_dir)  # outputs are never overwritten without a checkpoint
        store = Store.open(run_dir)
    except StoreIOError as exc:
        return _store_io_error(exc, run_dir)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        with session_gc(), contextlib.ExitStack() as scope:
            return await _execute(
                run_dir, store, new_config, resume, overrides or {}, options or RunOptions(), scope
            )
    except sqlite3.Error as exc:  # a direct write of the session (config, meta) failed
        error = store_error(store.path, exc)
        if isinstance(error, CheckpointCorrupt):
            raise UserError(str(error)) from None
        return _store_io_error(error, run_dir)
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        return _store_io_error(StoreIOError(f"cannot write in {run_dir}: {exc}"), run_dir)
    finally:
        store.close()


# OSErrors that mean the run directory cannot be written (anything else is a bug: exit 1).
_DISK_ERRNOS = frozenset(
    (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
)


def _store_io_error(exc: StoreError, run_dir: Path) -> RunResult:
    log.error(
        "%s — nothing is lost: free space or fix the disk (or the directory's permissions), "
        "then run with --resume",
        exc,
    )
    return RunResult(EXIT_STORE, None, None, run_dir)


async def _execute(
    run_dir: Path,
    store: Store,
    new_config: RunConfig | None,
    resume: bool,
    overrides: dict[str, Any],
    options: RunOptions,
    scope: contextlib.ExitStack,
) -> RunResult:
    """`scope`: what lasts as long as the run (the log filter that keeps its keys out)."""
    config = prepare_config(run_dir, store, new_config, resume, overrides)
    try:
        config.validate()
        dotenv = load_dotenv()
        gen_key, gen_var = stage_key(config.api_key_env, config.provider, config.base_url, dotenv)
        judge_key, judge_var = stage_key(
            config.judge_api_key_env, config.judge_provider, config.judge_base_url, dotenv
        )
        check_urls(config, {gen_var or "": gen_key, judge_var or "": judge_key})
        scope.enter_context(redacted_logs(tuple(k for k in (gen_key, judge_key) if k)))
        for who, given, var in (
            ("model", config.api_key_env, gen_var),
            ("judge", config.judge_api_key_env, judge_var),
        ):
            if var is not None and not given:
                log.info("%s endpoint: using the API key in %s (no --api-key-env given)", who, var)
        # Prices (and a budget that can be kept) are checked before anything is sent; the
        # spend of earlier sessions counts against --max-cost.
        cost = CostMeter.for_run(config, store.iter_usage())
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:  # a source that is not a dataset fails here, before any endpoint is contacted
        next(iter_pairs(config.data, split=config.split, limit=1, on_note=log.warning), None)
        config = _answers_mode(config)
        fleet = servers.fleet_for(config, run_dir)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    except ServerSettingsError as exc:
        raise UserError(str(exc)) from None
    stored_pairs = _dataset_identity(store, config)
    # Stored before any server starts, so a run whose servers fail to start can be resumed.
    store.set_meta("config", config.to_dict())
    store.set_meta("protocol", identity(config))
    interrupted = store.settle_interrupted()
    if interrupted:
        log.warning(
            "%d calls were in flight when this run last stopped: they are sent again and "
            "counted as possibly paid twice (possibly_duplicated_calls)",
            interrupted,
        )
    if resume:
        done = store.counts()
        log.info(
            "resuming %s: %s",
            run_dir,
            ", ".join(f"{k}={v}" for k, v in sorted(done.items())) or "no calls recorded yet",
        )
    signals = _Signals()
    signals.install()
    try:
        if fleet is None:
            return await _with_endpoints(
                run_dir,
                store,
                config,
                options,
                gen_key,
                judge_key,
                signals,
                None,
                cost,
                stored_pairs,
            )
        log.info(
            "starting %s; waiting until they answer (logs in %s)",
            ", ".join(f"{len(g.settings.groups())} {g.stage} server(s)" for g in fleet.groups),
            run_dir / servers.SERVER_LOG_DIR,
        )
        try:
            async with fleet:  # every server process is stopped when this block exits
                config = servers.with_server_urls(config, fleet)
                return await _with_endpoints(
                    run_dir,
                    store,
                    config,
                    options,
                    gen_key,
                    judge_key,
                    signals,
                    fleet,
                    cost,
                    stored_pairs,
                )
        except ServerStartError as exc:
            log.error("%s; nothing was sent", exc)
            return RunResult(EXIT_PREFLIGHT, None, None, run_dir)
    except asyncio.CancelledError:
        if not signals.count:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        log.warning("interrupted; nothing is lost: resume with --resume")
        return RunResult(EXIT_INTERRUPTED, None, None, run_dir)
    finally:
        signals.remove()


def _dataset_identity(store: Store, config: RunConfig) -> int | None:
    """Before anything is sent: a run starting afresh will store its pairs; a resumed one
    refuses a dataset whose rows differ from those it evaluated (evaluator.fingerprint).
    Returns how many of the run's pairs are already stored (None: a run started by an older
    version, which stored none: its dataset is not checked)."""
    if not store.has_calls():
        fingerprint.start_fresh(store)
        return 0
    try:
        stored = fingerprint.verify(config, store, action="resume")
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if stored is None:
        log.info("this run was started by an older version: its dataset is not checked by content")
    return stored


def _answers_mode(config: RunConfig) -> RunConfig:
    """Judge-only when the dataset holds the answers; --judge-only without them is an error."""
    has_answers = has_answer_columns(config.data, config.split)
    if config.judge_only and not has_answers:
        raise UserError(
            f"--judge-only: {describe_source(config.data)} has no answer columns "
            f"({' and '.join(ANSWER_COLUMNS)}); drop --judge-only to generate the answers"
        )
    if has_answers:
        log.info(
            "the dataset holds the answers (%s): judging them; no generation call is made",
            ", ".join(ANSWER_COLUMNS),
        )
        if not config.judge_only:
            config = dataclasses.replace(config, judge_only=True)
    return config


class _Signals:
    """SIGINT/SIGTERM for the whole run, given to the handler of the phase in progress.

    While the scheduler runs, its handler drains in-flight calls; in any other phase
    (servers starting, endpoint checks, outputs, servers stopping) a signal cancels
    the run's task, so every `finally` (server processes included) runs.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.count = 0
        self.handler: Callable[[str], None] | None = None
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig.name)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass

    def _on_signal(self, signame: str) -> None:
        self.count += 1
        if self.handler is not None:
            self.handler(signame)
        elif self.task is not None:
            log.warning("%s: stopping", signame)
            self.task.cancel()

    def remove(self) -> None:
        for sig in self._installed:
            self.loop.remove_signal_handler(sig)
        self._installed.clear()


async def _with_endpoints(
    run_dir: Path,
    store: Store,
    config: RunConfig,
    options: RunOptions,
    gen_key: str | None,
    judge_key: str | None,
    signals: _Signals,
    fleet: ServerFleet | None,
    cost: CostMeter,
    stored_pairs: int | None = None,
) -> RunResult:
    drain_timeout = options.drain_timeout
    budget = RetryBudget(config.retry_budget)
    # Every key of the run: each stage's clients keep both out of what they return.
    secrets = tuple(k for k in (gen_key, judge_key) if k)
    # Stages sending one model to one endpoint with one key share its rate limits.
    shared_limits: LimitsRegistry = {}
    config = _modes(config, store)
    gen_client: EndpointPool | BatchStage | NoGeneration
    judge_client: EndpointPool | BatchStage
    if config.judge_only:
        gen_client = NoGeneration()
    elif config.mode == "batch":
        gen_client = _batch_stage(
            "gen",
            "model batch endpoint",
            config.provider,
            config.base_url,
            gen_key,
            config,
            store,
            budget,
            secrets,
        )
    else:
        gen_client = _pool(
            "model endpoint",
            config.base_url,
            gen_key,
            config,
            config.concurrency,
            config.rpm,
            config.tpm,
            budget,
            shared_limits,
            secrets,
            managed=_managed(config.base_url, fleet),
        )
    if config.judge_mode == "batch":
        judge_client = _batch_stage(
            "judge",
            "judge batch endpoint",
            config.judge_provider,
            config.judge_base_url,
            judge_key,
            config,
            store,
            budget,
            secrets,
        )
    else:
        judge_client = _pool(
            "judge endpoint",
            config.judge_base_url,
            judge_key,
            config,
            config.judge_concurrency,
            config.judge_rpm,
            config.judge_tpm,
            budget,
            shared_limits,
            secrets,
            managed=_managed(config.judge_base_url, fleet),
        )
    metrics = None
    if options.metrics_port is not None:
        # Imported only when asked for: the HTTP server and prometheus_client cost start-up time.
        from evaluator.metrics import RunMetrics, start_server

        metrics = RunMetrics(secrets=secrets)
        metrics.describe_run(config.model, config.judge_model, config.simulated)
        metrics.duplicated.set(store.possibly_duplicated())
        metrics.set_expected(expected_pairs(config))
        expected = expected_calls(expected_pairs(config), len(config.judge_orders))
        metrics.watch_cost(cost, lambda: expected)
        for stage, pool in (("generation", gen_client), ("judge", judge_client)):
            pool.observer = metrics.stage_observer(stage)
            metrics.watch_pool(stage, pool)
        try:
            metrics_server = await start_server(metrics, options.metrics_host, options.metrics_port)
        except OSError as exc:
            raise UserError(
                f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: {exc}"
            ) from None
        log.info(
            "Prometheus metrics on http://%s:%d/metrics", options.metrics_host, options.metrics_port
        )
    # The report's side process starts with the session, at low priority, so that its
    # imports (pyarrow, matplotlib) use idle CPU now instead of adding to the run's end.
    side = ReportChild(run_dir, run_dir / report.RESULTS_TMP, config.judge_orders, background=True)
    try:
        return await _run_pools(
            run_dir,
            store,
            config,
            options,
            gen_client,
            judge_client,
            metrics,
            drain_timeout,
            signals,
            fleet,
            cost,
            side,
            {"gen": gen_key, "judge": judge_key},
            stored_pairs,
        )
    finally:
        side.close()  # a no-op once the report is written; stops it on every other path
        if metrics is not None:
            await metrics_server.cleanup()


async def _run_pools(
    run_dir: Path,
    store: Store,
    config: RunConfig,
    options: RunOptions,
    gen_client: EndpointPool | BatchStage,
    judge_client: EndpointPool | BatchStage,
    metrics: RunMetrics | None,
    drain_timeout: float,
    signals: _Signals,
    fleet: ServerFleet | None,
    cost: CostMeter | None,
    side: ReportChild,
    keys: dict[str, str | None],
    stored_pairs: int | None = None,
) -> RunResult:
    async with gen_client, judge_client:
        try:
            await gen_client.check()
            await judge_client.check()
            # A run that already finished needs no test call to be resumed: it sends nothing.
            finished = store.get_meta(report.FINISHED_META) == store.get_meta("config")
            checked = await run_preflight(
                config,
                {"gen": gen_client, "judge": judge_client},
                keys,
                probe=options.preflight and not (finished and not options.retry_failed),
            )
        except (EndpointUnreachable, PreflightError) as exc:
            log.error("preflight: %s (nothing was sent beyond the start-up check)", exc)
            return RunResult(EXIT_PREFLIGHT, None, None, run_dir)
        except RetryWaitTooLong as exc:
            log.error("preflight: %s; resume with --resume once that time has passed", exc)
            return RunResult(EXIT_RETRY_WAIT, None, None, run_dir)
        except FatalEndpointError as exc:
            log.error("preflight: %s (nothing was sent beyond the start-up check)", exc)
            return RunResult(EXIT_FATAL_ENDPOINT, None, None, run_dir)
        config = _after_preflight(store, config, checked, cost)
        scheduler: Scheduler | None = None
        bad_rows = BadRowLog()

        def on_store_error(exc: BaseException) -> None:
            if scheduler is not None:
                scheduler.fail(exc)

        reuse = _open_reuse(config.reuse, run_dir)
        writer = StoreWriter(
            store, on_error=on_store_error, on_commit=metrics.commit if metrics else None
        )
        writer.start()
        for client in (gen_client, judge_client):
            if isinstance(client, BatchStage):
                await client.start(writer)  # re-attaches to this run's earlier batches
        scheduler = Scheduler(
            config,
            store,
            writer,
            gen_client,
            judge_client,
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
        main = asyncio.current_task()
        received = 0

        def on_signal(signame: str) -> None:
            nonlocal received
            received += 1
            if received == 1:
                log.warning(
                    "%s: finishing in-flight calls (up to %gs), then stopping; "
                    "send again to stop at once",
                    signame,
                    drain_timeout,
                )
                scheduler.request_stop()
            elif main is not None:
                main.cancel()

        signals.handler = on_signal
        lag = LoopLagMonitor(on_sample=metrics.loop_lag.set if metrics else None)
        lag.start()
        progress = None
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
                activity=lambda: _activity(gen_client, judge_client),
            )
            progress.start()
        try:
            stats = await scheduler.run(drain_timeout=drain_timeout)
        except asyncio.CancelledError:
            stats = scheduler.stats
            stats.interrupted = True
        finally:
            await lag.stop()
            if progress is not None:
                await progress.stop()
            signals.handler = None
            if fleet is not None:
                for group in fleet.groups:
                    group.on_failed = None
            for client in (gen_client, judge_client):
                if isinstance(client, BatchStage):
                    await client.close()  # stop submitting; what is at the provider is recorded
            await writer.close()  # every outcome received is committed, on every path
            for other in reuse:
                other.close()
        if writer.error is None:
            store.set_meta("last_session", _session_summary(stats, lag, gen_client, judge_client))

    fatal = stats.fatal
    if isinstance(fatal, CheckpointCorrupt):
        log.error("%s", fatal)
        return RunResult(EXIT_USER, None, stats, run_dir)
    if isinstance(fatal, StoreError):
        log.error(
            "%s — the checkpoint holds everything committed before this (%s); free space or "
            "fix the disk, then run with --resume",
            fatal,
            writer.describe(),
        )
        return RunResult(EXIT_STORE, None, stats, run_dir)
    if received >= 2:  # "stop at once": the outputs can be rebuilt with `report DIR`
        return RunResult(EXIT_INTERRUPTED, None, stats, run_dir)
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
        return RunResult(EXIT_INTERRUPTED, None, stats, run_dir)
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
        return RunResult(EXIT_STORE, None, stats, run_dir)
    bad_rows.summarise(stats.bad_rows)
    if isinstance(fatal, RetryWaitTooLong):
        log.error(
            "stopping: %s. Nothing is lost: run with --resume once that time has passed "
            "(or give a larger --max-retry-wait to wait it out)",
            fatal,
        )
        code = EXIT_RETRY_WAIT
    elif isinstance(fatal, FatalEndpointError | ServersFailed):
        log.error("stopping: %s — fix this, then run with --resume (nothing is lost)", fatal)
        code = EXIT_FATAL_ENDPOINT
    elif isinstance(fatal, CircuitOpen):
        log.error(
            "stopped early: %s. Fix the cause, then send the failed calls again with  "
            "python -m evaluator --resume --out %s --retry-failed  (nothing else is re-sent)%s",
            fatal,
            run_dir,
            _request_setting_hint(fatal, run_dir),
        )
        code = EXIT_BREAKER
    elif isinstance(fatal, DatasetError):
        log.error("%s", fatal)
        code = EXIT_USER
    elif fatal is not None:
        log.error("internal error: %r", fatal)
        code = EXIT_INTERNAL
    elif stats.budget_exhausted:
        code = EXIT_BUDGET
    elif stats.interrupted:
        code = EXIT_INTERRUPTED
    elif stats.pairs_admitted == 0 and stats.bad_rows:
        log.error(
            "no valid pair in %s: all %d rows were bad (the first reasons are above)",
            config.data,
            stats.bad_rows,
        )
        code = EXIT_USER
    elif not summary["all_pairs_have_verdicts"]:
        log.error(
            "finished, but %d pair(s) failed and %d have no outcome: they are left out of the "
            "metrics (reasons below and in summary.json `failures`). Fix the cause, then "
            "python -m evaluator --resume --out %s --retry-failed",
            summary["n_failed"],
            summary["n_pending"],
            run_dir,
        )
        code = EXIT_FAILED_PAIRS
    else:
        code = EXIT_OK
    return RunResult(code, summary, stats, run_dir)


@contextlib.contextmanager
def stop_on_signal(signals: _Signals | None = None):
    """While the outputs are written (synchronous work: the event loop cannot run its signal
    handlers), SIGINT/SIGTERM set the returned flag at once; the report stops after the file
    it is writing (report.ReportInterrupted)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            log.warning(
                "%s: stopping after the output file being written", signal.Signals(signum).name
            )
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
    if signals is not None:  # the loop hears of the signal later: nothing more to do then
        signals.handler = lambda name: stop.set()
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _activity(*clients: EndpointPool | BatchStage) -> Activity:
    """Retries and rate-limit waits across the stages' endpoints, and the limits and
    servers' figures where endpoints follow their servers, for the progress display."""
    out = Activity()
    limits: dict[str, int] = {}
    servers = {}
    for stage, client in zip(("gen", "judge"), clients, strict=False):
        for ep in client.endpoints:
            st = ep.stats
            out.retries += st.transient + st.connection_failures + st.rate_limited
            out.rate_limited += st.rate_limited
            out.waiting_s = max(out.waiting_s, ep.limits.paused_for)
            follow = ep.follow
            if follow is not None and follow.active and follow.load is not None:
                limits[stage] = limits.get(stage, 0) + int(ep.concurrency.limit)
                servers[follow.url] = follow.load  # a server both stages use counts once
    if limits:
        out.limits = limits
        loads = list(servers.values())
        out.server_running = sum(x.running for x in loads)
        out.server_waiting = sum(x.waiting for x in loads)
        kv = [x.kv_usage for x in loads if x.kv_usage is not None]
        out.server_kv = max(kv) if kv else None
    return out


def _request_setting_hint(fatal: CircuitOpen, run_dir: Path) -> str:
    """When the failures say the model name is wrong, a resume cannot fix it: say how."""
    if fatal.http_status == 404 and "model" in fatal.message.lower():
        return (
            ". If the model name itself is wrong, it is part of every request: start a new "
            f"run with the right name and --reuse {run_dir} (every answer already paid for "
            "is copied, not sent again)"
        )
    return ""


def _after_preflight(
    store: Store, config: RunConfig, checked: PreflightReport, cost: CostMeter | None
) -> RunConfig:
    """Record what the preflight learnt: its test calls' usage (cost) and a simulated backend."""
    if checked.probes:
        store.add_probe_usage(checked.probes)
        if cost is not None:
            for stage, usage in checked.probes:
                if usage:
                    cost.stages[stage].add(usage, cost.prices.get(stage), probe=True)
        log.info("preflight: %d test call(s) answered", len(checked.probes))
    if checked.simulated and not config.simulated:
        log.warning(
            "SIMULATION: an endpoint identifies itself as the project's simulated backend; "
            "the outputs are stamped SIMULATION"
        )
        config = dataclasses.replace(config, simulated=True)
        # The stored config keeps what was given (not the managed servers' URLs of now).
        stored = store.get_meta("config") or {}
        store.set_meta("config", {**stored, "simulated": True})
    return config


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
