"""Scenario 4, an endpoint pool of three servers of different speeds, the fastest SIGKILLed.

Zero lost, the calls in flight on the killed server completed elsewhere, and throughput
against the summed capacity of the live servers before and after the kill.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
from pathlib import Path

from ..harness.measure import Bench
from ..harness.report import log
from ..harness.servers import Poller, Server, answered, start_server
from ..harness.tables import Section, f0, f1, f2, med, table

POOL_LATENCIES_MS, POOL_SIGMA = (20.0, 60.0, 180.0), 0.5
# 32 slots per server, split as the calls are (two generations per judge call).
POOL_GEN_C, POOL_JUDGE_C = 21, 11
POOL_KILL_AT = 0.35  # SIGKILL the fastest server once this share of the 3n calls is answered


def scenario_pool(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    from workers.simulated.data import write_synthetic_dataset

    n = 1500 if args.quick else 4000
    c, jc = POOL_GEN_C, POOL_JUDGE_C
    calls = 3 * n
    sec = Section(
        f"4. Endpoint pool: three servers (median latency {', '.join(f'{x:g}' for x in POOL_LATENCIES_MS)} ms, "
        f"sigma {POOL_SIGMA:g}), {c}+{jc} in flight on each, the fastest SIGKILLed after "
        f"{POOL_KILL_AT:.0%} of the calls ({n} pairs, {calls} calls; median of {args.repeats})"
    )
    data = write_synthetic_dataset(tmp / "pool.jsonl", n)
    results = [_one_run(bench, tmp, data, n, i) for i in range(args.repeats)]
    _write(sec, results, n)
    return sec


def _capacity() -> tuple[list[float], list[float], list[float]]:
    """Per server: mean latency (s), capacity and pipeline bound (calls/s)."""
    c, jc = POOL_GEN_C, POOL_JUDGE_C
    means = [lat / 1000.0 * math.exp(POOL_SIGMA**2 / 2) for lat in POOL_LATENCIES_MS]
    # Capacity of a server (the definition): its concurrency cap ÷ its mean latency;
    # its cap is c generation + jc judge calls.
    cap = [(c + jc) / m for m in means]
    # Pipeline bound: two generations per judge call, so 3 × min(c / 2, jc) calls per mean.
    pipe = [3 * min(c / 2, jc) / m for m in means]
    return means, cap, pipe


def _one_run(bench: Bench, tmp: Path, data: Path, n: int, i: int) -> dict:
    """Run i: three fresh servers, the fastest SIGKILLed at POOL_KILL_AT of the calls."""
    import orjson

    c, jc = POOL_GEN_C, POOL_JUDGE_C
    calls = 3 * n
    servers = [
        start_server(bench.children, tmp, data, f"pool-{i}-{j}", lat, POOL_SIGMA)
        for j, lat in enumerate(POOL_LATENCIES_MS)
    ]
    fast, survivors = servers[0], servers[1:]
    poller = Poller(servers, interval_s=0.2)
    st: dict = {"killed": None}

    def on_tick(elapsed: float) -> None:
        total = poller.tick(elapsed)
        if total is None or st["killed"] is not None or total < POOL_KILL_AT * calls:
            return
        try:
            raw = fast.stats_raw(bodies=True)
        except OSError:
            return  # try again at the next poll
        os.kill(fast.pid, signal.SIGKILL)  # at once after the snapshot, parsed after
        snap = orjson.loads(raw)
        poller.freeze(fast, snap)
        st["killed"] = {"t": elapsed, "snap": snap}
        log(
            f"pool run {i + 1}: SIGKILLed the {POOL_LATENCIES_MS[0]:g} ms server at "
            f"{elapsed:.1f} s, {answered(snap)} answers from it, "
            f"{sum(snap['bodies'].values()) - snap['requests_total']} in flight there"
        )

    try:
        # No preflight test call here: this scenario accounts for every body the servers
        # received (distinct == 3n), and the judge's test call is not a call of the run.
        m = bench.evaluator(
            servers,
            data,
            n,
            c,
            jc,
            extra=("--no-preflight",),
            strict=False,
            on_tick=on_tick,
            watched=survivors,
        )
        end = poller.timeline[-1][0] if poller.timeline else float("inf")
        final = [s.stats(bodies=True) for s in survivors]
    finally:
        for s in servers:
            bench.children.stop(s.proc)
    killed = st["killed"]
    if killed is None:
        raise RuntimeError(f"pool run {i + 1}: finished before the kill point")
    _account(m, killed, final, fast, poller, end, calls)
    log(
        f"pool run {i + 1}: before kill {m['rate_before']:.0f} calls/s, after "
        f"{m['rate_after']:.0f} calls/s; n_valid {m['n_valid']}/{n}, failed {m['n_failed']}, "
        f"distinct bodies {m['distinct']}/{calls}, in flight at kill {m['inflight_at_kill']}, "
        f"answered there after the snapshot {m['window_answers']}, re-sent to a survivor "
        f"{m['resent']}"
    )
    return m


def _account(
    m: dict, killed: dict, final: list[dict], fast: Server, poller: Poller, end: float, calls: int
) -> None:
    """Where every call went (bodies seen by each server) and the rates around the kill."""
    snap_bodies = killed["snap"]["bodies"]
    surv_bodies: set[str] = set()
    received = sum(snap_bodies.values())
    for f in final:
        surv_bodies |= set(f["bodies"])
        received += sum(f["bodies"].values())
    union = set(snap_bodies) | surv_bodies
    m["distinct"] = len(union)
    m["received"] = received
    m["inflight_at_kill"] = sum(snap_bodies.values()) - killed["snap"]["requests_total"]
    m["resent"] = len(set(snap_bodies) & surv_bodies)
    m["t_kill"] = killed["t"]
    eps = m["session"].get("endpoints", {})
    on_fast = [
        e
        for stage in eps.values()
        for e in stage
        if str(e.get("base_url", "")).rstrip("/") == fast.url.rstrip("/")
    ]
    m["conn_failures"] = sum(e.get("connection_failures", 0) for e in on_fast)
    # The snapshot is taken a moment before the SIGKILL; calls that the killed server
    # answered in between are in neither count. The evaluator's own count of answers
    # from that endpoint tells how many.
    m["window_answers"] = sum(e.get("ok", 0) for e in on_fast) - answered(killed["snap"])
    # Rates from the timeline of answered calls (polled every 0.2 s).
    t5 = poller.t_at(0.05 * calls, 0.0)
    t90 = poller.t_at(0.9 * calls, end)
    m["rate_before"] = poller.slope(t5, killed["t"])
    m["rate_after"] = poller.slope(killed["t"] + 1.0, t90)
    m["rate_whole"] = calls / m["session_wall_s"]
    m["after_window"] = t90 - killed["t"] - 1.0


def _write(sec: Section, results: list[dict], n: int) -> None:
    """The capacity table, the per-run table, the notes and the targets."""
    c, jc = POOL_GEN_C, POOL_JUDGE_C
    calls = 3 * n
    means, cap, pipe = _capacity()
    before = med(r["rate_before"] for r in results)
    after = med(r["rate_after"] for r in results)
    rows = [
        [
            "before the kill (3 servers)",
            f0(sum(cap)),
            f0(sum(pipe)),
            f0(before),
            f2(before / sum(cap)),
            f2(before / sum(pipe)),
        ],
        [
            "after the kill (2 servers)",
            f0(sum(cap[1:])),
            f0(sum(pipe[1:])),
            f0(after),
            f2(after / sum(cap[1:])),
            f2(after / sum(pipe[1:])),
        ],
    ]
    sec.lines += table(
        [
            "phase",
            "capacity Σ cap/mean latency",
            "pipeline bound",
            "achieved calls/s",
            "÷ capacity",
            "÷ pipeline bound",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )
    sec.lines += [""] + table(
        [
            "run",
            "kill at s",
            "valid pairs",
            "failed",
            "distinct bodies (3n)",
            "in flight on killed server at the snapshot",
            "answered by it before the SIGKILL",
            "re-sent and answered by a survivor",
            "requests received (all servers)",
            "connection failures seen",
            "session s",
        ],
        ["---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
        [
            [
                i + 1,
                f1(r["t_kill"]),
                f"{r['n_valid']}/{n}",
                r["n_failed"],
                f"{r['distinct']}/{calls}",
                r["inflight_at_kill"],
                r["window_answers"],
                r["resent"],
                r["received"],
                r["conn_failures"],
                f1(r["session_wall_s"]),
            ]
            for i, r in enumerate(results)
        ],
    )
    sec.lines += [
        "",
        "Capacity of a server = its concurrency cap (" + f"{c} generation + {jc} judge"
        ") ÷ its mean latency (median × e^(σ²/2): "
        + ", ".join(f"{1000 * m:.0f}" for m in means)
        + " ms). Pipeline bound = what those caps allow given 2 generations per judge call "
        f"(3 × min({c} ÷ 2, {jc}) ÷ mean per server) = {pipe[0] / cap[0]:.2f} × capacity. Rates are "
        "slopes of the answered-call count polled every 0.2 s from the servers' /sim/stats: "
        "before = from 5% of the calls to the kill, after = from 1 s after the kill to 90% of "
        "the calls. 'In flight at the snapshot' = bodies the killed server had received minus "
        "requests it had answered, from its /sim/stats?bodies=1 read just before the SIGKILL; "
        "'answered by it before the SIGKILL' = calls it answered between that snapshot and the "
        "kill (the evaluator's `ok` count for that endpoint minus the snapshot's answers); "
        "'re-sent and answered by a survivor' = snapshot bodies that a surviving server then "
        "received. Every call in flight at the snapshot must be accounted for: in flight = "
        "answered before the SIGKILL + re-sent.",
    ]
    lost_ok = all(r["n_valid"] == n and r["n_failed"] == 0 for r in results)
    sec.target(
        "pool: zero lost (n_valid == n, n_failed == 0) with the fastest server killed",
        ", ".join(f"{r['n_valid']}/{n} valid, {r['n_failed']} failed" for r in results),
        lost_ok,
    )
    moved = all(
        r["distinct"] == calls and r["resent"] + r["window_answers"] >= r["inflight_at_kill"]
        for r in results
    )
    sec.target(
        "pool: calls in flight on the killed server completed elsewhere (distinct bodies == 3n)",
        "; ".join(
            f"{r['distinct']}/{calls} distinct, {r['inflight_at_kill'] - r['window_answers']} "
            f"in flight at the kill, {r['resent']} re-sent to a survivor"
            for r in results
        ),
        moved,
    )
    sec.target(
        "pool: throughput ≥ 0.85 × summed capacity of the live servers, before and after the kill",
        f"before {before / sum(cap):.2f}, after {after / sum(cap[1:]):.2f} of capacity "
        f"({before / sum(pipe):.2f} / {after / sum(pipe[1:]):.2f} of the pipeline bound)",
        min(before / sum(cap), after / sum(cap[1:])) >= 0.85,
    )
