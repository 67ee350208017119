"""Scenario 5, full size: 115,000 pairs (345K calls) at zero latency; peak RSS vs 10K pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.measure import Bench
from ..harness.report import log
from ..harness.servers import Poller, start_server
from ..harness.tables import Section, describe, f0, f1, f3, lag_cell, med, table

FULL_C = 64


def scenario_full(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    small = 2000 if args.quick else 10000
    big = 20000 if args.quick else 115000
    sec = Section(
        f"5. Full-size synthetic run: {big} pairs ({3 * big} calls) at zero latency, 1 run; "
        f"{small} pairs for comparison (median of {args.repeats})"
    )
    small_runs, big_run = _measure(bench, args, tmp, small, big)
    _write(sec, args, small_runs, big_run, small, big)
    return sec


def _measure(
    bench: Bench, args: argparse.Namespace, tmp: Path, small: int, big: int
) -> tuple[list[dict], dict]:
    """args.repeats runs of the first `small` pairs, then one run of all `big` pairs."""
    from workers.simulated.data import write_synthetic_dataset

    log(f"full: writing {big} synthetic pairs")
    data = write_synthetic_dataset(tmp / "full.jsonl", big)
    server = start_server(bench.children, tmp, data, "full")
    try:
        bench.evaluator([server], data, 50, FULL_C, warmup=True)
        small_runs = []
        for i in range(args.repeats):
            m = bench.evaluator([server], data, small, FULL_C, warmup=True)  # --limit small
            if m["n_valid"] != small or m["n_failed"]:
                raise RuntimeError(f"full: {small}-pair run: n_valid {m['n_valid']}")
            small_runs.append(m)
            log(f"full: {small} pairs run {i + 1}: {describe('evaluator', m)}")
        log(f"full: {big} pairs, one run (progress every 30 s)")
        poller = Poller([server], interval_s=30.0)

        def on_tick(elapsed: float) -> None:
            done = poller.tick(elapsed)
            if done is not None and elapsed > 1.0:
                log(f"full: {elapsed:.0f} s, {done} of {3 * big} calls answered")

        big_run = bench.evaluator(
            [server], data, big, FULL_C, on_tick=on_tick, timeout=max(900.0, bench.timeout)
        )
        log(f"full: {big} pairs: {describe('evaluator', big_run)}")
    finally:
        bench.children.stop(server.proc)
    return small_runs, big_run


def _write(
    sec: Section,
    args: argparse.Namespace,
    small_runs: list[dict],
    big_run: dict,
    small: int,
    big: int,
) -> None:
    """Both sizes in one table, the memory ratio and the three targets."""
    rows = []
    for label, size, rs in (
        (f"{small} pairs (median of {len(small_runs)})", small, small_runs),
        (f"{big} pairs (1 run)", big, [big_run]),
    ):
        calls = 3 * size
        rows.append(
            [
                label,
                calls,
                f1(med(r["wall_s"] for r in rs)),
                f0(med(calls / r["wall_s"] for r in rs)),
                f0(med(calls / r["session_wall_s"] for r in rs)),
                f3(1000 * med(r["cpu_s"] for r in rs) / calls),
                lag_cell(rs),
                f1(med(r["rss_mib"] for r in rs)),
            ]
        )
    sec.lines += table(
        [
            "evaluator run",
            "calls",
            "wall s",
            "calls/s (spawn to exit)",
            "calls/s (in session)",
            "client CPU ms/call",
            "loop lag p99 / max ms",
            "peak RSS MiB",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )
    rss_small = med(r["rss_mib"] for r in small_runs)
    ratio = big_run["rss_mib"] / rss_small
    sec.lines += [
        "",
        f"Peak RSS at {big} pairs ÷ at {small} pairs: {ratio:.2f} (1.00 = memory independent of "
        f"dataset size). Concurrency {FULL_C}+{FULL_C}. Wall time is spawn to exit: start-up, "
        "the run and the final report with all its outputs.",
    ]
    note = "" if not args.quick else f" (--quick: {big} pairs, not 115,000)"
    sec.target(
        f"full: {big} pairs in < 5 min{note}", f"{big_run['wall_s']:.0f} s", big_run["wall_s"] < 300
    )
    sec.target(
        f"full: peak RSS < 400 MB{note}",
        f"{big_run['rss_mib']:.0f} MiB ({big_run['rss_mib'] * 1.048576:.0f} MB)",
        big_run["rss_mib"] * 1.048576 < 400,
    )
    sec.target(
        f"full: peak RSS at {big} ÷ at {small} pairs ≤ 1.3",
        f"{ratio:.2f} ({big_run['rss_mib']:.0f} vs {rss_small:.0f} MiB)",
        ratio <= 1.3,
    )
