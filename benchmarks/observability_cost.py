"""What watching a run costs: throughput with Prometheus metrics and progress on vs. off.

    python benchmarks/observability_cost.py [--pairs 6667] [--repeats 7]

Against the SIMULATED server at zero latency (the client is the bottleneck, so
any cost of the metrics or the progress display shows up in calls/s), the same
run is made with everything off (`--quiet`) and with everything on
(`--metrics-port` scraped every second by a thread here, plus progress bars
redrawn twice a second, `--progress bar`). Runs alternate; the medians of the
in-session rate (`summary.json` `last_session.calls_per_s`: the pipeline only,
without start-up and the final report) are compared, and so are the medians of
the in-session client CPU per call (`last_session.cpu_ms_per_call`), which a
shared, noisy machine disturbs much less than calls/s.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's benchmarks/ and workers/

from benchmarks.harness.children import Children, child_env  # noqa: E402
from benchmarks.harness.servers import spawn_server  # noqa: E402
from benchmarks.harness.tables import table  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, stop: threading.Event, counter: list[int]) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                r.read()
                counter[0] += 1
        except OSError:
            pass


def one_run(data: Path, url: str, work: Path, observed: bool) -> tuple[float, float, int]:
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [
        sys.executable,
        "-m",
        "evaluator",
        "run",
        "--data",
        str(data),
        "--model",
        "m",
        "--base-url",
        url,
        "--out",
        str(out),
        "--concurrency",
        "128",
        "--judge-concurrency",
        "128",
        "--judge-prompt",
        "builtin",  # the paper's prompt is downloaded; benchmarks run offline
    ]
    scrapes = [0]
    stop = threading.Event()
    if observed:
        port = _free_port()
        cmd += ["--metrics-port", str(port), "--progress", "bar"]
        thread = threading.Thread(target=_scrape, args=(port, stop, scrapes), daemon=True)
        thread.start()
    else:
        cmd += ["--quiet"]
    subprocess.run(
        cmd, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop.set()
    session = orjson.loads((out / "summary.json").read_bytes())["last_session"]
    return session["calls_per_s"], session["cpu_ms_per_call"], scrapes[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6667)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from workers.simulated.data import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp, Children() as children:
        work = Path(tmp)
        data = write_synthetic_dataset(work / "pairs.jsonl", args.pairs)
        names = ("--served-model-name", "m", "--served-model-name", "google/gemma-3-27b-it")
        server = spawn_server(children, work, "sim", ("--dataset", str(data), *names))
        url = server.url
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        scrapes = []
        for i in range(args.repeats):
            for observed in (False, True) if i % 2 == 0 else (True, False):
                rate, cpu, n = one_run(data, url, work, observed)
                rates[observed].append(rate)
                cpus[observed].append(cpu)
                if observed:
                    scrapes.append(n)
                print(
                    f"run {i + 1} {'on ' if observed else 'off'}: {rate:.0f} calls/s, "
                    f"{cpu:.4f} ms CPU/call",
                    file=sys.stderr,
                )
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    rows = [
        [
            label,
            f"{statistics.median(rates[observed]):.0f}",
            f"{statistics.median(cpus[observed]):.4f}",
            ", ".join(f"{r:.0f}" for r in rates[observed]),
        ]
        for label, observed in (
            ("off (`--quiet`, no metrics)", False),
            ("on (`--metrics-port` scraped every 1 s, `--progress bar`)", True),
        )
    ]
    header = [
        "observability",
        f"calls/s (median of {args.repeats}, in session)",
        "client CPU ms/call (median, in session)",
        "calls/s of each run",
    ]
    print("\n".join(table(header, ["---", "---:", "---:", "---"], rows)))
    print(
        f"\ncost: {100 * (off - on) / off:+.1f}% of calls/s, {100 * (cpu_on - cpu_off) / cpu_off:+.1f}% "
        f"of client CPU per call ({args.pairs} pairs, {3 * args.pairs} calls per run; "
        f"scrapes per observed run: {scrapes})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
