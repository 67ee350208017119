"""Before anything is sent (open_run): the run's config against what its directory holds,
the stages' keys (kept out of the logs from then on), prices, the dataset against the run's
(by content) and the answers' source; earlier runs to reuse; and what the start-up check
learnt (after_preflight)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

from evaluator import fingerprint, rundir, servers
from evaluator.config import ConfigError, RunConfig, load_dotenv, request_differences
from evaluator.costs import CostMeter
from evaluator.dataset import (
    ANSWER_COLUMNS,
    DatasetError,
    describe_source,
    has_answer_columns,
    iter_pairs,
)
from evaluator.identity import identity
from evaluator.preflight import PreflightReport
from evaluator.run.exits import UserError
from evaluator.run.stages import WHO, Stage, StageName, role, stage_keys
from evaluator.secrets import check_urls, redacted_logs
from evaluator.store import Store, StoreError
from workers.server_settings import ServerSettingsError
from workers.vllm_servers import ServerFleet

log = logging.getLogger("evaluator")


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


def dataset_identity(store: Store, config: RunConfig) -> int | None:
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


def answers_mode(config: RunConfig) -> RunConfig:
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


def open_reuse(dirs: list[str], run_dir: Path) -> list[Store]:
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


def after_preflight(
    store: Store, config: RunConfig, checked: PreflightReport, stages: list[Stage]
) -> RunConfig:
    """Record what the preflight learnt: its test calls' usage (cost) and a simulated backend."""
    if checked.probes:
        store.add_probe_usage(checked.probes)
        by_name = {s.name: s for s in stages}
        for stage, usage in checked.probes:
            if usage:
                by_name[stage].charge(usage, probe=True)
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


def open_run(
    scope: contextlib.ExitStack | contextlib.AsyncExitStack,
    run_dir: Path,
    store: Store,
    new_config: RunConfig | None,
    resume: bool,
    overrides: dict[str, Any],
) -> tuple[RunConfig, dict[StageName, str | None], CostMeter, ServerFleet | None, int | None]:
    """Everything checked before a server starts or an endpoint is contacted: the config,
    the keys (kept out of the logs from here on), prices, the dataset; the store then holds
    the config. Returns (config, keys, cost, fleet not started, pairs already stored)."""
    config = prepare_config(run_dir, store, new_config, resume, overrides)
    try:
        config.validate()
        dotenv = load_dotenv()
        found = stage_keys(config, dotenv)
        keys = {s: key for s, (key, _) in found.items()}
        check_urls(config, {var or "": key for key, var in found.values()})
        scope.enter_context(redacted_logs(tuple(k for k in keys.values() if k)))
        for stage, (_, var) in found.items():
            if var is not None and not role(config, stage).api_key_env:
                log.info(
                    "%s endpoint: using the API key in %s (no --api-key-env given)",
                    WHO[stage],
                    var,
                )
        # Prices (and a budget that can be kept) are checked before anything is sent; the
        # spend of earlier sessions counts against --max-cost.
        cost = CostMeter.for_run(config, store.iter_usage())
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:  # a source that is not a dataset fails here, before any endpoint is contacted
        next(iter_pairs(config.data, split=config.split, limit=1, on_note=log.warning), None)
        config = answers_mode(config)
        fleet = servers.fleet_for(config, run_dir)
    except (DatasetError, ServerSettingsError) as exc:
        raise UserError(str(exc)) from None
    stored_pairs = dataset_identity(store, config)
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
    return config, keys, cost, fleet, stored_pairs
