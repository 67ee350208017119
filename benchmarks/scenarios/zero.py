"""Scenario 1, zero latency: the evaluator vs a bare aiohttp loop vs the reference design.

The server answers at once, so the client is the bottleneck: calls/s and CPU per call show
what each client itself costs. The issue's measuring conditions: 20,000 requests, 256 in flight.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.clients import REFERENCE_THREADS
from ..harness.measure import Bench
from ..harness.report import log
from ..harness.servers import start_server
from ..harness.tables import Section, describe, f0, f1, f2, f3, lag_cell, med, rotate, table

ZERO_C = 128  # evaluator 128 gen + 128 judge; baseline 256 in flight; reference 128 threads
ZERO_PAIRS = 6667  # 20,001 calls


def scenario_zero(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    n = args.pairs or (600 if args.quick else ZERO_PAIRS)
    sec = Section(f"1. Zero latency ({n} pairs, {3 * n} calls; median of {args.repeats})")
    runs, startup = _measure(bench, args, tmp, n)
    _clients_table(sec, runs, n)
    _ratios_table(sec, runs, n)
    _startup_table(sec, startup)
    sec.lines += [
        "",
        "In session: the evaluator's `last_session.wall_s` (from the scheduler's start until the "
        "checkpoint is flushed: no start-up, no final report), the clients' time after their "
        "imports. Outside the session = wall − session: interpreter start-up and imports, "
        "and for the evaluator also opening the run and writing its final report. Loop lag p99 is the upper bound of its log bucket (10 a decade), as the "
        "evaluator reports it; max is exact.",
    ]
    return sec


def _measure(
    bench: Bench, args: argparse.Namespace, tmp: Path, n: int
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Each client's runs (a warm-up, then args.repeats in rotated order), then start-ups."""
    from workers.simulated.data import write_synthetic_dataset

    c = ZERO_C
    data = write_synthetic_dataset(tmp / "zero.jsonl", n)
    server = start_server(bench.children, tmp, data, "zero")
    runs: dict[str, list[dict]] = {"evaluator": [], "baseline": [], "reference": []}
    startup: dict[str, list[dict]] = {k: [] for k in runs}

    def run(who: str, size: int, warmup: bool = False) -> dict:
        if who == "evaluator":
            return bench.evaluator([server], data, size, c, warmup=warmup)
        if who == "baseline":
            return bench.baseline(server, data, size, 2 * c, warmup=warmup)
        return bench.reference(server, data, size, warmup=warmup)

    try:
        for who in runs:  # warm-up (not counted): page cache, .pyc files, first connections
            run(who, 50, warmup=True)
        for i in range(args.repeats):
            # Rotate the order so slow drift of a noisy machine hits all clients alike.
            for who in rotate(tuple(runs), i):
                m = run(who, n)
                runs[who].append(m)
                log(f"zero latency run {i + 1}: {describe(who, m)}")
        for _ in range(args.repeats):
            for who in startup:
                startup[who].append(bench.startup(who, server))
    finally:
        bench.children.stop(server.proc)
    return runs, startup


def _clients_table(sec: Section, runs: dict[str, list[dict]], n: int) -> None:
    """One row per client: medians of its wall time, rates, CPU, loop lag and memory."""
    c = ZERO_C
    calls = 3 * n
    in_flight = {
        "evaluator": f"{c}+{c}",
        "baseline": f"{2 * c}",
        "reference": f"{REFERENCE_THREADS} threads",
    }
    rows = []
    for who, rs in runs.items():
        rows.append(
            [
                who,
                in_flight[who],
                f2(med(r["wall_s"] for r in rs)),
                f2(med(r["wall_s"] - r["session_wall_s"] for r in rs)),
                f0(med(calls / r["wall_s"] for r in rs)),
                f0(med(calls / r["session_wall_s"] for r in rs)),
                f3(1000 * med(r["cpu_s"] for r in rs) / calls),
                lag_cell(rs),
                f1(med(r["rss_mib"] for r in rs)),
                f3(1000 * med(r["server_cpu_s"] for r in rs) / calls),
            ]
        )
    sec.lines += table(
        [
            "client",
            "in flight",
            "wall s",
            "of which outside the session s",
            "calls/s (spawn to exit)",
            "calls/s (in session)",
            "client CPU ms/call",
            "loop lag p99 / max ms",
            "peak RSS MiB",
            "server CPU ms/call",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )


def _ratios_table(sec: Section, runs: dict[str, list[dict]], n: int) -> None:
    """The evaluator against each other client, with the two targets."""
    calls = 3 * n

    def tput(who: str, key: str) -> float:
        return med(calls / r[key] for r in runs[who])

    ratio_rows = []
    for other, goal in (("baseline", 0.5), ("reference", 6.0)):
        spawn = tput("evaluator", "wall_s") / tput(other, "wall_s")
        sess = tput("evaluator", "session_wall_s") / tput(other, "session_wall_s")
        cpu = med(r["cpu_s"] for r in runs["evaluator"]) / med(r["cpu_s"] for r in runs[other])
        ok = min(spawn, sess) >= goal
        ratio_rows.append(
            [
                f"evaluator ÷ {other}",
                f2(spawn),
                f2(sess),
                f2(cpu),
                f"≥ {goal:g}",
                "met" if ok else "**MISSED**",
            ]
        )
        sec.target(
            f"zero latency: evaluator calls/s ≥ {goal:g}× {other}",
            f"{spawn:.2f}× spawn-to-exit, {sess:.2f}× in session",
            ok,
        )
    sec.lines += [""] + table(
        [
            "ratio",
            "calls/s (spawn to exit)",
            "calls/s (in session)",
            "CPU/call",
            "target (calls/s)",
            "",
        ],
        ["---", "---:", "---:", "---:", "---:", "---"],
        ratio_rows,
    )


def _startup_table(sec: Section, startup: dict[str, list[dict]]) -> None:
    """Interpreter start-up plus imports of each client: the fixed part of every wall time."""
    sec.lines += [""] + table(
        [
            "fixed start-up (interpreter + imports, in every wall time)",
            "wall s",
            "CPU s",
            "RSS MiB",
        ],
        ["---", "---:", "---:", "---:"],
        [
            [
                who,
                f2(med(r["wall_s"] for r in rs)),
                f2(med(r["cpu_s"] for r in rs)),
                f1(med(r["rss_mib"] for r in rs)),
            ]
            for who, rs in startup.items()
        ],
    )
