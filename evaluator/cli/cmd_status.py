"""`status`: a run's progress from its checkpoint, whether or not it is running now."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from evaluator import report
from evaluator.cli.common import damage_is_user_error, emit
from evaluator.config import ConfigError, RunConfig
from evaluator.costs import CostMeter, expected_calls
from evaluator.dataset import describe_source
from evaluator.run import EXIT_OK, UserError
from evaluator.servers import SERVER_LOG_DIR
from evaluator.sharding import expected_pairs
from evaluator.store import Store, StoreError


def cmd_status(args: argparse.Namespace) -> int:
    """Progress of a run from its checkpoint, whether or not it is running now."""
    try:
        store = Store.open(args.dir, create=False, lock=False)  # read-only: changes nothing
    except StoreError as exc:
        raise UserError(str(exc)) from None
    with store, damage_is_user_error(store):
        raw = store.get_meta("config")
        if raw is None:
            raise UserError(f"{args.dir} holds no run config")
        config = RunConfig.from_dict(raw)
        pid = store.holder()
        counts = store.counts()
        pairs = store.pair_counts()
        session = store.get_meta("last_session") or {}
        duplicated = store.possibly_duplicated()
        merged = store.get_meta("merged_from")
        try:
            cost = CostMeter.for_run(dataclasses.replace(config, max_cost=None), store.iter_usage())
        except ConfigError as exc:
            cost, cost_error = None, str(exc)
        batches = store.batch_counts()
        failures = store.failure_groups(limit=report.SHOWN_FAILURE_GROUPS)
    expected = expected_pairs(config)

    def n(stage: str, status: str) -> int:
        return sum(v for k, v in counts.items() if k.startswith(stage) and k.endswith(":" + status))

    state = f"running (pid {pid})" if pid else "not running"
    label = " [SIMULATED backend]" if config.simulated else ""
    total = f"/{'~' if config.shard else ''}{expected}" if expected is not None else ""
    emit(f"run {args.dir}: {state}{label}")
    emit(f"  model {config.model}; judge {config.judge_model} ({config.judge_order})")
    emit(f"  dataset {describe_source(config.data)}")
    if config.limit is not None:
        emit(f"  limit: the first {config.limit} valid pairs")
    if config.shard is not None:
        emit(f"  shard {config.shard}: only the pairs whose id hashes to it")
    if merged:
        emit(f"  merged from {len(merged)} shards: {', '.join(m['dir'] for m in merged)}")
    if config.vllm or config.judge_vllm:
        emit(f"  managed servers: logs in {args.dir / SERVER_LOG_DIR}/")
    emit(f"  pairs judged {pairs['judged']}{total}, with a failed call {pairs['failed']}")
    for stage, name in (("gen", "generation"), ("judge", "judge")):
        emit(
            f"  {name}: {n(stage, 'done')} answered, {n(stage, 'failed')} failed, "
            f"{n(stage, 'started')} in flight, {n(stage, 'interrupted')} to re-send"
        )
    emit(f"  calls possibly paid twice so far: {duplicated}")
    if cost is None:
        emit(f"  cost: unknown ({cost_error})")
    else:
        for stage, name in (("gen", "generation"), ("judge", "judge")):
            c = cost.stages[stage]
            usd = f"${c.usd:,.4f}" if cost.prices[stage] is not None else "unknown (no price)"
            emit(f"  {name} tokens: {c.tokens_in:,} in, {c.tokens_out:,} out; est. cost {usd}")
        projected = cost.projected(expected_calls(expected, len(config.judge_orders)))
        line = f"  est. cost so far ${cost.spent:,.4f}"
        if projected is not None:
            line += f", projected total ${projected:,.4f}"
        if config.max_cost is not None:
            line += f", budget (--max-cost) ${config.max_cost:g}"
        emit(line)
    if batches:
        at = [batches.get(k, (0, 0)) for k in ("submitting", "submitted")]
        done = [batches.get(k, (0, 0)) for k in ("ended", "settled")]
        emit(
            f"  provider batches: {sum(b for b, _ in at)} at the provider "
            f"({sum(r for _, r in at)} requests), {sum(b for b, _ in done)} ended"
        )
    if failures:
        emit("  failed calls, most frequent first:")
        for group in failures:
            emit("    " + group.line())
    for line in _concurrency_lines(session):
        emit(line)
    if session:
        emit(
            f"  last session: {session.get('calls_sent', 0)} calls in {session.get('wall_s', 0):.0f}s "
            f"({session.get('calls_per_s') or 0:.1f}/s), event-loop lag p99 "
            f"{session.get('event_loop_lag_p99_ms')} ms, est. cost ${session.get('estimated_cost_usd', 0):.2f}"
        )
    return EXIT_OK


def _concurrency_lines(session: dict[str, Any]) -> list[str]:
    """How each stage's concurrency ran in the last session: a fixed cap, or following
    its servers' vLLM metrics (with their last figures)."""
    out = []
    for stage, endpoints in (session.get("endpoints") or {}).items():
        if not endpoints:
            continue
        followed = [e for e in endpoints if e.get("follows_server")]
        limits = "+".join(f"{e.get('concurrency_limit', 0):g}" for e in endpoints)
        if not followed:
            out.append(f"  {stage} concurrency (last session): fixed cap, limit {limits} (AIMD)")
            continue
        running = sum(e.get("server_running") or 0 for e in followed)
        waiting = sum(e.get("server_waiting") or 0 for e in followed)
        kv = [
            e["server_kv_cache_usage"]
            for e in followed
            if e.get("server_kv_cache_usage") is not None
        ]
        kv_text = f", KV cache {max(kv):.0%}" if kv else ""
        peak = "+".join(f"{e.get('concurrency_peak', 0):g}" for e in followed)
        out.append(
            f"  {stage} concurrency (last session): follows {len(followed)} of {len(endpoints)} "
            f"server(s), limit {limits} (peak {peak}); server then: {running:g} running, "
            f"{waiting:g} waiting{kv_text}"
        )
    return out
