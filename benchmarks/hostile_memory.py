"""Peak memory of the evaluator while a hostile server sends 64 answers of 50 MB at once.

    python benchmarks/hostile_memory.py               # 3 repeats of each run, ~1 minute
    python benchmarks/hostile_memory.py --repeats 5

The server is the SIMULATED hostile server (workers/simulated/hostile.py, in a thread of
this process): every generation answer is 50 MB, streamed in 1 MB chunks without a
Content-Length (the harder case: the size is only known by reading), and the first 64 of
them wait for each other, so all 64 are in flight at once. The evaluator runs 32 pairs
(64 generation calls) with 64 calls in flight (`--concurrency 64`, `--rpm` set so slow
start does not hold it to 8) and the default `--max-response-mb 4`: each answer is given
up after 4 MB, and the run ends with exit 6 (every pair failed as response_too_large).

The baseline, measured in the same session: the same run against the same server with
ordinary answers (exit 0). Each run is a fresh process whose peak RSS (`ru_maxrss`) is
taken by a tiny launcher that reaps it with os.wait4 (benchmarks/harness/measure.py
explains why a launcher). Medians of the repeats; the ratio is hostile over baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The throughput benchmark's measurement: a fresh process under its launcher.
from benchmarks.harness.children import Children  # noqa: E402
from benchmarks.harness.measure import measure  # noqa: E402
from workers.simulated import SimConfig  # noqa: E402
from workers.simulated.data import write_synthetic_dataset  # noqa: E402
from workers.simulated.hostile import Hostile, ThreadedHostileServer  # noqa: E402

PAIRS = 32  # 64 generation calls
IN_FLIGHT = 64
ANSWER_MB = 50


def run_once(
    children: Children, server: ThreadedHostileServer, data: Path, work: Path, tag: str
) -> dict:
    import orjson

    out = work / f"run-{tag}"
    cmd = [
        sys.executable,
        "-m",
        "evaluator",
        "run",
        *("--data", str(data), "--model", "m", "--judge-model", "j"),
        *("--base-url", server.base_url, "--out", str(out), "--quiet"),
        *("--judge-prompt", "builtin", "--max-failures", "off"),
        *("--concurrency", str(IN_FLIGHT), "--rpm", "1000000"),
    ]
    # Exit 6 is the hostile run's expected end (every pair failed as response_too_large).
    measured = measure(children, cmd, work, work / f"{tag}.log", [], 600.0, ok_exits=(0, 6))
    summary = orjson.loads((out / "summary.json").read_bytes())
    measured["n_failed"] = summary["n_failed"]
    measured["failures_by_class"] = summary.get("failures_by_class")
    measured["disk_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"baseline": [], "hostile": []}
    with tempfile.TemporaryDirectory(prefix="hostile-mem-") as tmp, Children() as children:
        work = Path(tmp)
        data = write_synthetic_dataset(work / "pairs.jsonl", PAIRS, section_chars=200)
        for i in range(args.repeats):
            for kind in ("baseline", "hostile"):
                hostile = (
                    Hostile(huge_mb=ANSWER_MB, huge_barrier=IN_FLIGHT)
                    if kind == "hostile"
                    else Hostile()
                )
                with ThreadedHostileServer(SimConfig(served_names=("m", "j")), hostile) as server:
                    r = run_once(children, server, data, work, f"{kind}-{i}")
                    stats = server.stats()["hostile"]
                if kind == "hostile":
                    expected = {"response_too_large": 2 * PAIRS}
                    assert r["exit"] == 6 and r["failures_by_class"] == expected, r
                    assert stats["barrier_full"], "the 64 answers were not in flight at once"
                    assert stats["huge_started"] == 2 * PAIRS, stats
                else:
                    assert r["exit"] == 0 and r["n_failed"] == 0, r
                rows[kind].append(r)
                print(
                    f"{kind:8s} #{i + 1}: peak RSS {r['rss_mib']:7.1f} MiB, "
                    f"wall {r['wall_s']:5.1f} s, exit {r['exit']}, run directory "
                    f"{r['disk_bytes'] / 1024:.0f} KiB",
                    file=sys.stderr,
                )
    med = {k: statistics.median(r["rss_mib"] for r in v) for k, v in rows.items()}
    print(
        f"| {IN_FLIGHT} answers of {ANSWER_MB} MB in flight (default --max-response-mb 4) | "
        f"{med['hostile']:.0f} MiB | baseline (ordinary answers) {med['baseline']:.0f} MiB | "
        f"ratio {med['hostile'] / med['baseline']:.2f} | median of {args.repeats} |"
    )


if __name__ == "__main__":
    main()
