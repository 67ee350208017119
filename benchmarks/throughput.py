"""Throughput engine benchmarks: the evaluator against the SIMULATED server, with baselines.

    python benchmarks/throughput.py                       # all five scenarios, ~10-13 minutes
    python benchmarks/throughput.py --quick               # smaller sizes, ~3-4 minutes
    python benchmarks/throughput.py --scenario zero,pool  # some scenarios only

Scenarios (see benchmarks/README.md for why and for the targets):

  zero       zero latency: evaluator vs a bare aiohttp loop vs the reference design
             (ThreadPoolExecutor(128) + the official `openai` sync client)
  latency    lognormal latency, median 300 ms, 1,024 requests in flight, vs Little's law
  ratelimit  a server enforcing 6,000 req/min: achieved rate and share of 429s, with the
             evaluator learning the limit from headers and with --rpm/--tpm given
  pool       three servers of different speeds, the fastest SIGKILLed mid-run
  full       115,000 pairs (345K calls) at zero latency: wall time, peak RSS vs 10K pairs

Every measured client is a fresh process, started by a tiny launcher that reaps it with
os.wait4, so its wall time (spawn to exit), user+sys CPU and peak RSS (ru_maxrss) belong to
that one run (see harness/measure.py for why not straight from this process). Servers are
separate processes (`python -m workers.simulated`). Children import evaluator/ and workers/
from this checkout (PYTHONPATH, checked at start); the report records a hash of those sources.

This file is the entry point only: the scenarios are in benchmarks/scenarios/, the harness
(processes, servers, measurement, tables, report) in benchmarks/harness/.

Child modes (used by the harness itself; benchmarks/harness/clients.py):
  throughput.py _baseline  ...   bare aiohttp + uvloop + orjson closed loop
  throughput.py _reference ...   ThreadPoolExecutor + openai.OpenAI (pip install openai)
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_MD = REPO / "benchmarks" / "results-latest.md"
# Run by path, Python puts benchmarks/ first on sys.path; the harness is imported as the
# package `benchmarks`, and the scenarios import workers/ in this process: this checkout's.
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["_baseline"], ["_reference"]):
        # A measured client: import its module only (what it imports is measured).
        from benchmarks.harness import clients

        run_client = clients.baseline_main if argv[0] == "_baseline" else clients.reference_main
        return run_client(argv[1:])
    from benchmarks.harness.report import log, run_benchmark
    from benchmarks.scenarios import SCENARIO_NAMES, SCENARIOS

    p = argparse.ArgumentParser(
        prog="python benchmarks/throughput.py",
        description="Throughput-engine benchmarks against the SIMULATED server: zero latency "
        "(vs bare aiohttp and the openai+threads reference), high latency, rate limits, an "
        "endpoint pool losing a server, and a full-size run.",
    )
    p.add_argument(
        "--scenario",
        default=",".join(SCENARIO_NAMES),
        help=f"comma-separated subset of {','.join(SCENARIO_NAMES)} (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test, ~4 min)")
    p.add_argument(
        "--pairs", type=int, help="pairs per zero-latency run (default 6667: 20,001 calls)"
    )
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median shown)")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds allowed per run")
    p.add_argument(
        "--no-write",
        action="store_true",
        help=f"do not write {RESULTS_MD.relative_to(REPO)}",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    wanted = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown or not wanted:
        p.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIO_NAMES)}")
    args.scenarios = [s for s in SCENARIO_NAMES if s in wanted]

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: children stopped

    signal.signal(signal.SIGTERM, on_term)
    command = "python benchmarks/throughput.py" + (f" {' '.join(argv)}" if argv else "")
    report = run_benchmark(args, command, SCENARIOS)
    print(report, end="")
    if not args.no_write:
        RESULTS_MD.write_text(report, encoding="utf-8")
        log(f"written to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
