"""Default settings vs fixed concurrencies against a SIMULATED continuous-batching GPU.

    python benchmarks/gpu_concurrency.py                  # both profiles, 3 repeats (~10 min)
    python benchmarks/gpu_concurrency.py --repeats 1      # a smoke test (~3.5 min)
    python benchmarks/gpu_concurrency.py --profile large  # one profile

Each run is a fresh simulated server (`python -m workers.simulated --batching ...`,
workers/simulated/batching.py: no model runs, the engine only times the answers as a
continuous-batching GPU would) serving both stages, and a fresh evaluator process
(`python -m evaluator run`) on a synthetic dataset. The evaluator runs with default
settings (its limit follows the server's vLLM metrics); with a sweep of fixed
`--concurrency C --judge-concurrency C` (C per stage, so up to 2C in flight on the one
server), each given `--rpm 1e9 --judge-rpm 1e9` so that it runs at C from the first
call (an endpoint whose limits are unknown otherwise slow-starts from 8: the sweep
shows what each C gives at best); and as the old default did, `--concurrency 64`
with that slow start. Every run has `--timeout 30` (the requests here take seconds,
not minutes: a queue that would time out a real run shows as timeouts here too).

Measured per run, from `summary.json` `last_session` (scheduler start to checkpoint
flushed: no start-up, no final report): calls/s and output tokens/s over the whole
session, ramp-up and tail included (every run makes the same calls, so this is the
inverse of the time the job took); timeouts (attempts without an answer) and failed
pairs; for default settings the peak limit reached per stage; from the server's
`/sim/stats`: the mean batch (sequences per engine step, weighted by step time) and
the most sequences it ran at once. Tables show medians. Target: default settings
reach >= 95% of the best fixed concurrency's calls/s, with no request timing out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's benchmarks/ and workers/

from benchmarks.harness.children import Children, child_env  # noqa: E402
from benchmarks.harness.servers import spawn_server  # noqa: E402
from benchmarks.harness.tables import table as md_table  # noqa: E402

TIMEOUT_S = 30


@dataclass(frozen=True)
class Profile:
    name: str
    what: str
    server: tuple[str, ...]  # flags of python -m workers.simulated
    pairs: int
    sweep: tuple[int, ...]  # fixed concurrencies per stage


PROFILES = {
    # A card with little KV room for this model: 60 to 125 sequences fit (judge calls
    # hold more than generations), and each step is dear per sequence.
    "small": Profile(
        "small",
        "KV cache 12,000 tokens: 60-125 sequences by the mix of calls; "
        "a step 12 ms + 0.25 ms per sequence",
        (
            "--max-num-seqs", "256", "--kv-cache-tokens", "12000", "--step-ms", "12",
            "--seq-ms", "0.25", "--prefill-token-ms", "0.02",
            "--output-tokens", "48", "--judge-output-tokens", "24", "--output-sigma", "0.5",
        ),
        pairs=150,
        sweep=(32, 64, 128),
    ),
    # An H200-class card: hundreds of sequences fit, a step costs little more with more
    # sequences (memory-bound decode), so throughput grows with the batch.
    "large": Profile(
        "large",
        "KV cache 120,000 tokens: ~400 judge calls or up to 1,024 generations "
        "(--max-num-seqs); a step 20 ms + 0.03 ms per sequence",
        (
            "--max-num-seqs", "1024", "--kv-cache-tokens", "120000", "--step-ms", "20",
            "--seq-ms", "0.03", "--prefill-token-ms", "0.002",
            "--output-tokens", "64", "--judge-output-tokens", "32", "--output-sigma", "0.5",
        ),
        pairs=600,
        sweep=(256, 512, 1024),
    ),
}  # fmt: skip


@dataclass
class Run:
    setting: str
    calls_per_s: float  # the whole session, ramp-up and tail included
    tokens_out_per_s: float
    session_s: float
    timeouts: int  # attempts that got no answer in --timeout
    failed_attempts: int  # every attempt that failed (timeouts included)
    failed_pairs: int
    peak_limit: str  # default settings: the highest limit per stage
    peak_running: int
    mean_batch: float  # sequences per engine step, weighted by the step's time


OLD_DEFAULT = "old default (64, slow start)"


def _flags(setting: str) -> list[str]:
    """The evaluator flags of a setting: "default", OLD_DEFAULT, or a fixed C."""
    if setting == "default":
        return []
    if setting == OLD_DEFAULT:
        return ["--concurrency", "64", "--judge-concurrency", "64"]
    return ["--concurrency", setting, "--judge-concurrency", setting]


def _fixed(setting: str) -> bool:
    return setting not in ("default", OLD_DEFAULT)


def one_run(profile: Profile, data: Path, work: Path, setting: str) -> Run:
    tmp = Path(tempfile.mkdtemp(dir=work))
    with Children() as children:  # the server stopped on every path
        served = ("--served-model-name", "m", "--served-model-name", "j")
        server = spawn_server(children, tmp, "sim", ("--batching", *profile.server, *served))
        cmd = [
            sys.executable, "-m", "evaluator", "run", "--data", str(data),
            "--model", "m", "--judge-model", "j", "--base-url", server.url,
            "--out", str(tmp / "out"), "--quiet", "--timeout", str(TIMEOUT_S),
            # Our rubric: the paper's prompt is downloaded, and benchmarks run offline.
            "--judge-prompt", "builtin",
        ]  # fmt: skip
        cmd += _flags(setting)
        if _fixed(setting):  # known limits: no slow start, C from the first call
            cmd += ["--rpm", "1e9", "--judge-rpm", "1e9"]
        done = subprocess.run(
            cmd, cwd=tmp, env=child_env(), capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode not in (0, 6):
            raise RuntimeError(f"evaluator exited {done.returncode}: {done.stderr[-2000:]}")
        summary = orjson.loads((tmp / "out" / "summary.json").read_bytes())
        gpu = server.stats()["gpu"]
    s = summary["last_session"]
    endpoints = [e for stage in s["endpoints"].values() for e in stage]
    peaks = [f"{e.get('concurrency_peak', 0):.0f}" for e in endpoints if e.get("follows_server")]
    shutil.rmtree(tmp, ignore_errors=True)
    return Run(
        setting=setting,
        calls_per_s=s["calls_sent"] / s["wall_s"],
        tokens_out_per_s=s["tokens_out"] / s["wall_s"],
        session_s=s["wall_s"],
        timeouts=sum(e["connection_failures"] for e in endpoints),
        failed_attempts=sum(e["sent"] - e["ok"] for e in endpoints),
        failed_pairs=summary["n_failed"] + summary["n_pending"],
        peak_limit="+".join(peaks) or "-",
        peak_running=gpu["peak_running"],
        mean_batch=gpu["mean_batch"],
    )


def run_profile(profile: Profile, repeats: int, work: Path) -> list[Run]:
    from workers.simulated.data import write_synthetic_dataset

    data = write_synthetic_dataset(work / f"{profile.name}.jsonl", profile.pairs)
    settings = ["default", OLD_DEFAULT, *(str(c) for c in profile.sweep)]
    runs = []
    for r in range(repeats):
        order = settings[r % len(settings) :] + settings[: r % len(settings)]  # spread drift
        for c in order:
            run = one_run(profile, data, work, c)
            print(
                f"  {profile.name} repeat {r + 1}: {run.setting:>28}  {run.calls_per_s:6.1f} "
                f"calls/s  {run.session_s:5.1f} s  timeouts {run.timeouts}  peak limit "
                f"{run.peak_limit}  mean batch {run.mean_batch}  peak {run.peak_running}",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    return runs


def table(profile: Profile, runs: list[Run]) -> tuple[str, bool]:
    by: dict[str, list[Run]] = {}
    for run in runs:
        by.setdefault(run.setting, []).append(run)
    med = {k: statistics.median(r.calls_per_s for r in v) for k, v in by.items()}
    fixed = {k: v for k, v in med.items() if _fixed(k)}
    best = max(fixed, key=fixed.__getitem__)
    ratio = med["default"] / fixed[best]
    default_timeouts = sum(r.timeouts for r in by["default"])
    met = ratio >= 0.95 and default_timeouts == 0
    rows = []
    for key in ["default", OLD_DEFAULT, *sorted(fixed, key=int)]:
        rs = by[key]
        label = {"default": "default (follows the server)"}.get(key, key)
        if key == best:
            label += " (best fixed)"
        rows.append(
            [
                label,
                f"{med[key]:.1f}",
                f"{med[key] / fixed[best]:.2f}",
                f"{statistics.median(r.tokens_out_per_s for r in rs):,.0f}",
                f"{statistics.median(r.session_s for r in rs):.1f}",
                f"{statistics.median(r.mean_batch for r in rs):.0f}",
                f"{statistics.median(r.peak_running for r in rs):.0f}",
                sum(r.timeouts for r in rs),
                sum(r.failed_pairs for r in rs),
                ", ".join(sorted({r.peak_limit for r in rs})),
            ]
        )
    lines = [
        f"**{profile.name} GPU** ({profile.what}; {profile.pairs} pairs = "
        f"{3 * profile.pairs} calls; median of {len(by['default'])})",
        "",
        *md_table(
            [
                "concurrency per stage",
                "calls/s",
                "÷ best fixed",
                "output tokens/s",
                "session s",
                "mean batch on the GPU",
                "peak running",
                "timeouts (all runs)",
                "failed pairs",
                "peak limit (gen+judge)",
            ],
            ["---"] + ["---:"] * 8 + ["---"],
            rows,
        ),
        "",
        f"Default settings: {ratio:.2f} of the best fixed concurrency ({best}), "
        f"{default_timeouts} timeouts: target {'met' if met else 'NOT met'} (>= 0.95, none "
        f"timing out). The old default: {med[OLD_DEFAULT] / fixed[best]:.2f} of the best.",
        "",
    ]
    return "\n".join(lines), met


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_concurrency.py", description=__doc__.split("\n")[0])
    p.add_argument("--profile", choices=(*PROFILES, "all"), default="all")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    started = time.time()
    load_before = os.getloadavg()
    parts, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-concurrency-") as work:
        for name in names:
            runs = run_profile(PROFILES[name], args.repeats, Path(work))
            text, met = table(PROFILES[name], runs)
            parts.append(text)
            verdicts.append(met)
    load_after = os.getloadavg()
    head = (
        f"Run started {dt.datetime.fromtimestamp(started, dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{os.cpu_count()} CPUs ({platform.machine()}), python {platform.python_version()}; "
        f"command `python benchmarks/gpu_concurrency.py"
        f"{'' if args.profile == 'all' else ' --profile ' + args.profile}"
        f"{'' if args.repeats == 3 else f' --repeats {args.repeats}'}`; "
        f"{time.time() - started:.0f} s; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. The GPU is SIMULATED (workers/simulated/batching.py), "
        "the data synthetic.\n"
    )
    print(head + "\n" + "\n".join(parts))
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
