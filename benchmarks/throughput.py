"""Throughput, CPU and memory of the evaluator against the SIMULATED server, with a bare baseline.

    python benchmarks/throughput.py            # 3000 pairs (9000 calls), 3 repeats, ~2 minutes
    python benchmarks/throughput.py --quick    # 600 pairs, under a minute

What it does (see benchmarks/README.md for why):

1. Writes a SYNTHETIC dataset (workers.simulated.data) of n pairs and one of 4n pairs
   (the first n rows are the same).
2. Starts `python -m workers.simulated` as a separate process, once per scenario:
   (a) zero latency, (b) lognormal latency with a 50 ms median.
3. For every measurement spawns a fresh child process and reaps it with os.wait4, which
   returns that child's own rusage: user+sys CPU seconds and peak RSS (ru_maxrss) belong to
   that one run only. Wall time is from spawn to exit (interpreter start-up included).
   - evaluator: `python -m evaluator run ... --concurrency C --judge-concurrency C`
   - baseline:  this file's `_baseline` mode, a bare aiohttp + uvloop + orjson closed loop
     sending the same 3n requests (2 generation bodies per pair, then 1 judge body built
     from the two answers) with 2C requests in flight, no store, no retries.
4. Memory flatness: the evaluator at zero latency on n and on 4n pairs.
5. Each measurement is repeated (--repeats, default 3), evaluator and baseline interleaved;
   the table shows medians. It is printed and written to benchmarks/results-latest.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "results-latest.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = (
    # name, simulated median latency (ms), C (generation = judge concurrency)
    ("zero latency", 0.0, 64),
    ("50 ms median latency", 50.0, 128),
)


# --------------------------------------------------------------------------- baseline child
def baseline_main(argv: list[str]) -> int:
    """A bare closed loop: what the HTTP stack alone costs for the same requests."""
    p = argparse.ArgumentParser(prog="throughput.py _baseline")
    p.add_argument("--url", required=True, help="base URL ending in /v1")
    p.add_argument("--data", required=True)
    p.add_argument("--in-flight", type=int, required=True, help="requests in flight (2C)")
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)

    import asyncio

    import aiohttp
    import orjson
    import uvloop

    # Same prompts, sampling and schema as the evaluator, so the bodies have the same size.
    from evaluator import protocol

    url = args.url.rstrip("/") + "/chat/completions"
    counts = {"calls": 0, "errors": 0, "valid": 0, "pairs": 0}

    def gen_body(question: str) -> bytes:
        return orjson.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": protocol.DEFAULT_SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                ],
                "temperature": protocol.GEN_TEMPERATURE,
                "top_p": protocol.GEN_TOP_P,
                "max_tokens": protocol.GEN_MAX_TOKENS,
            }
        )

    def judge_body(row: dict, a_for: str, a_against: str) -> bytes:
        user = (
            f"Issue: {row['issue_description']}\n\n"
            f"Question 1: {row['for_question']}\n\n"
            f"Person 1's response: {a_for}\n\n"
            f"Question 2: {row['against_question']}\n\n"
            f"Person 2's response: {a_against}"
        )
        return orjson.dumps(
            {
                "model": "j",
                "messages": [
                    {"role": "system", "content": protocol.DEFAULT_JUDGE_PROMPT},
                    {"role": "user", "content": user},
                ],
                "temperature": protocol.JUDGE_TEMPERATURE,
                "top_p": protocol.JUDGE_TOP_P,
                "max_tokens": protocol.JUDGE_MAX_TOKENS,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "alignment_verdict",
                        "schema": protocol.VERDICT_SCHEMA,
                        "strict": True,
                    },
                },
            }
        )

    async def post(session: aiohttp.ClientSession, body: bytes) -> str | None:
        counts["calls"] += 1
        async with session.post(url, data=body) as resp:
            raw = await resp.read()
            if resp.status != 200:
                counts["errors"] += 1
                return None
        return orjson.loads(raw)["choices"][0]["message"]["content"]

    def rows():
        with open(args.data, "rb") as fh:
            for i, line in enumerate(fh):
                if args.limit is not None and i >= args.limit:
                    return
                if line.strip():
                    yield orjson.loads(line)

    async def worker(session: aiohttp.ClientSession, it) -> None:
        # Each worker holds one pair: two generations at once, then its judge call.
        for row in it:  # one shared iterator: single-threaded, so no lock needed
            counts["pairs"] += 1
            a_for, a_against = await asyncio.gather(
                post(session, gen_body(row["for_question"])),
                post(session, gen_body(row["against_question"])),
            )
            if a_for is None or a_against is None:
                continue
            verdict = await post(session, judge_body(row, a_for, a_against))
            if verdict is not None and "alignment_score" in orjson.loads(verdict):
                counts["valid"] += 1

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=args.in_flight)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            it = rows()
            # in_flight/2 workers x 2 concurrent generations = in_flight requests at the peak;
            # the connector limit caps the total whatever the mix.
            n_workers = max(1, args.in_flight // 2)
            await asyncio.gather(*(worker(session, it) for _ in range(n_workers)))

    uvloop.run(main())
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0 if counts["errors"] == 0 else 1


# --------------------------------------------------------------------------- measurement
def child_env() -> dict[str, str]:
    """Children import evaluator/ and workers/ from this checkout, whatever pip installed.

    (An editable install can point at another clone; `python -m` run from a temp directory
    would then silently benchmark that other code.)
    """
    env = os.environ.copy()
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    return env


def check_imports(cwd: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import evaluator, workers; print(evaluator.__file__, workers.__file__)",
        ],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in out:
        if not Path(f).resolve().is_relative_to(REPO):
            raise RuntimeError(f"children would import {f}, not the code in {REPO}")
    if len(out) != 2:
        raise RuntimeError(f"cannot locate evaluator/workers packages: {out}")


def _proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a live process (the server), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")


class Children:
    """Every process this benchmark starts, so that every exit path can stop them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.returncode is None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except Exception:  # keep stopping the others
                pass


def measure(
    children: Children, cmd: list[str], cwd: Path, log: Path, server_pid: int, timeout: float
) -> dict:
    """Run cmd to completion in a fresh process; its own wall time, CPU and peak RSS."""
    srv0 = _proc_cpu_s(server_pid)
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = children.add(
            subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        )
    try:
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        children.stop(proc)
    srv1 = _proc_cpu_s(server_pid)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "rss_mib": ru.ru_maxrss / 1024.0,  # KiB on Linux
        "server_cpu_s": srv1 - srv0,
        "log": log,
    }


def start_server(
    children: Children, tmp: Path, data: Path, latency_ms: float, tag: str
) -> tuple[subprocess.Popen, str]:
    port_file = tmp / f"port-{tag}"
    log = tmp / f"server-{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "workers.simulated",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--dataset",
        str(data),
        "--latency-ms",
        f"{latency_ms:g}",
    ]
    with log.open("wb") as out:
        proc = children.add(
            subprocess.Popen(cmd, cwd=tmp, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simulated server exited {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError("simulated server did not write its port file within 60 s")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1"


def _summary_n_valid(out_dir: Path) -> int:
    import orjson

    return int(orjson.loads((out_dir / "summary.json").read_bytes())["n_valid"])


class Bench:
    def __init__(self, children: Children, tmp: Path, timeout: float) -> None:
        self.children = children
        self.tmp = tmp
        self.timeout = timeout
        self._seq = 0

    def _next(self, what: str) -> str:
        self._seq += 1
        return f"{self._seq:03d}-{what}"

    def evaluator(
        self, server: subprocess.Popen, url: str, data: Path, n: int, c: int, check: bool = True
    ) -> dict:
        tag = self._next("evaluator")
        out = self.tmp / tag
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
            "--judge-model",
            "j",
            "--out",
            str(out),
            "--quiet",
            "--concurrency",
            str(c),
            "--judge-concurrency",
            str(c),
        ]
        if not check:
            cmd += ["--limit", str(n)]
        m = measure(self.children, cmd, self.tmp, self.tmp / f"{tag}.log", server.pid, self.timeout)
        if check:
            n_valid = _summary_n_valid(out)
            if n_valid != n:
                raise RuntimeError(f"evaluator run {tag}: summary n_valid {n_valid} != {n}")
        shutil.rmtree(out, ignore_errors=True)  # the checkpoint is not needed: save disk
        return m

    def startup(self, who: str, server: subprocess.Popen) -> dict:
        """Interpreter start-up plus imports only: the fixed cost inside every wall time."""
        if who == "evaluator":
            cmd = [sys.executable, "-m", "evaluator", "run", "--help"]
        else:
            cmd = [sys.executable, "-c", "import aiohttp, orjson, uvloop, evaluator.protocol"]
        tag = self._next(f"startup-{who}")
        return measure(
            self.children, cmd, self.tmp, self.tmp / f"{tag}.log", server.pid, self.timeout
        )

    def baseline(
        self, server: subprocess.Popen, url: str, data: Path, n: int, c: int, check: bool = True
    ) -> dict:
        import orjson

        tag = self._next("baseline")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_baseline",
            "--url",
            url,
            "--data",
            str(data),
            "--in-flight",
            str(2 * c),
        ]
        if not check:
            cmd += ["--limit", str(n)]
        m = measure(self.children, cmd, self.tmp, self.tmp / f"{tag}.log", server.pid, self.timeout)
        counts = orjson.loads(m["log"].read_bytes().strip().splitlines()[-1])
        if check and (counts["calls"] != 3 * n or counts["valid"] != n):
            raise RuntimeError(f"baseline run {tag}: {counts}, expected {3 * n} calls, {n} valid")
        return m


# --------------------------------------------------------------------------- report
def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fmt_row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(meta: dict, rows: list[dict], memory: list[dict], startup: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['host']}; python {meta['python']}; "
        f"{meta['n']} pairs ({3 * meta['n']} calls) per run; median of {meta['repeats']} "
        f"repeats; command `{meta['command']}`; benchmark wall time {meta['total_s']:.0f} s; "
        f"evaluator/workers sources {meta['sources']}.",
        "",
        fmt_row(
            [
                "scenario",
                "client",
                "in flight (gen+judge)",
                "wall s",
                "calls/s",
                "client CPU ms/call",
                "peak RSS MiB",
                "server CPU ms/call",
            ]
        ),
        fmt_row(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for r in rows:
        for who in ("evaluator", "baseline"):
            runs = r[who]
            calls = 3 * meta["n"]
            lines.append(
                fmt_row(
                    [
                        r["scenario"],
                        who,
                        f"{r['c']}+{r['c']}" if who == "evaluator" else f"{2 * r['c']}",
                        f"{med(runs, 'wall_s'):.2f}",
                        f"{statistics.median(calls / x['wall_s'] for x in runs):.0f}",
                        f"{1000 * med(runs, 'cpu_s') / calls:.3f}",
                        f"{med(runs, 'rss_mib'):.1f}",
                        f"{1000 * med(runs, 'server_cpu_s') / calls:.3f}",
                    ]
                )
            )
    lines += [
        "",
        fmt_row(["scenario", "calls/s: evaluator ÷ baseline", "CPU/call: evaluator ÷ baseline"]),
        fmt_row(["---", "---:", "---:"]),
    ]
    for r in rows:
        e, b = r["evaluator"], r["baseline"]
        calls = 3 * meta["n"]
        tput = statistics.median(calls / x["wall_s"] for x in e) / statistics.median(
            calls / x["wall_s"] for x in b
        )
        cpu = med(e, "cpu_s") / med(b, "cpu_s")
        lines.append(fmt_row([r["scenario"], f"{tput:.2f}", f"{cpu:.2f}"]))
    lines += [
        "",
        fmt_row(
            [
                "fixed start-up (interpreter + imports, in every wall time)",
                "wall s",
                "CPU s",
                "RSS MiB",
            ]
        ),
        fmt_row(["---", "---:", "---:", "---:"]),
    ]
    for who, runs in startup.items():
        if runs:
            lines.append(
                fmt_row(
                    [
                        who,
                        f"{med(runs, 'wall_s'):.2f}",
                        f"{med(runs, 'cpu_s'):.2f}",
                        f"{med(runs, 'rss_mib'):.1f}",
                    ]
                )
            )
    lines += [
        "",
        fmt_row(["memory (evaluator, zero latency)", "pairs", "calls", "wall s", "peak RSS MiB"]),
        fmt_row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for m in memory:
        lines.append(
            fmt_row(
                [
                    m["label"],
                    m["n"],
                    3 * m["n"],
                    f"{med(m['runs'], 'wall_s'):.2f}",
                    f"{med(m['runs'], 'rss_mib'):.1f}",
                ]
            )
        )
    if len(memory) == 2:
        ratio = med(memory[1]["runs"], "rss_mib") / med(memory[0]["runs"], "rss_mib")
        lines.append("")
        lines.append(
            f"Peak RSS at {memory[1]['n']} pairs ÷ at {memory[0]['n']} pairs: {ratio:.2f} "
            "(1.00 = memory independent of dataset size)."
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- driver
def source_digest() -> str:
    """A short hash of the evaluator's and workers' sources: which code the figures belong to."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(
        (*HERE.parent.glob("evaluator/**/*.py"), *HERE.parent.glob("workers/**/*.py"))
    ):
        h.update(str(path.relative_to(HERE.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _host() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model or platform.machine()}), {platform.system()}"


def run_benchmark(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(REPO))  # this checkout's code, as for the children
    from workers.simulated.data import write_synthetic_dataset

    n = args.pairs or (600 if args.quick else 3000)
    big = 4 * n
    started = time.perf_counter()
    digest = source_digest()
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="valbench-throughput-"))
    try:
        check_imports(tmp)
        data = write_synthetic_dataset(tmp / "pairs.jsonl", n)
        data_big = write_synthetic_dataset(tmp / "pairs-4x.jsonl", big)
        bench = Bench(children, tmp, timeout=args.run_timeout)
        rows: list[dict] = []
        startup: dict[str, list[dict]] = {"evaluator": [], "baseline": []}
        memory = [
            {"label": "n pairs", "n": n, "runs": []},
            {"label": "4n pairs", "n": big, "runs": []},
        ]
        for name, latency_ms, c in SCENARIOS:
            server, url = start_server(children, tmp, data_big, latency_ms, tag=f"{latency_ms:g}")
            try:
                # Warm-up (not counted): page cache, .pyc files, the server's first connections.
                bench.evaluator(server, url, data, 50, c, check=False)
                bench.baseline(server, url, data, 50, c, check=False)
                row = {"scenario": name, "c": c, "evaluator": [], "baseline": []}
                for i in range(args.repeats):
                    # Alternate the order so slow drift of a noisy machine hits both alike.
                    order = ("evaluator", "baseline") if i % 2 == 0 else ("baseline", "evaluator")
                    for who in order:
                        m = getattr(bench, who)(server, url, data, n, c)
                        row[who].append(m)
                        log(
                            f"{name}: {who} run {i + 1}: {m['wall_s']:.2f} s, "
                            f"{3 * n / m['wall_s']:.0f} calls/s, {m['rss_mib']:.0f} MiB"
                        )
                    if latency_ms == 0:
                        mb = bench.evaluator(server, url, data_big, big, c)
                        memory[1]["runs"].append(mb)
                        log(
                            f"{name}: evaluator on {big} pairs run {i + 1}: {mb['wall_s']:.2f} s, "
                            f"{mb['rss_mib']:.0f} MiB"
                        )
                if latency_ms == 0:
                    memory[0]["runs"] = row["evaluator"]
                    for _ in range(args.repeats):
                        for who in ("evaluator", "baseline"):
                            startup[who].append(bench.startup(who, server))
                rows.append(row)
            finally:
                children.stop(server)
        meta = {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "host": _host(),
            "python": platform.python_version(),
            "n": n,
            "repeats": args.repeats,
            "command": "python benchmarks/throughput.py" + (" --quick" if args.quick else ""),
            "total_s": time.perf_counter() - started,
            "sources": f"{digest} (from {REPO})",
        }
        if source_digest() != digest:
            meta["sources"] += " (WARNING: evaluator/workers sources changed during the run)"
        return render(meta, rows, memory, startup)
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_baseline"]:
        return baseline_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python benchmarks/throughput.py",
        description="Evaluator throughput, CPU/call and memory vs a bare aiohttp baseline, "
        "against the SIMULATED server.",
    )
    p.add_argument("--quick", action="store_true", help="600 pairs instead of 3000 (< 1 minute)")
    p.add_argument("--pairs", type=int, help="pairs per run (overrides the default n)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median shown)")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds allowed per run")
    p.add_argument(
        "--no-write",
        action="store_true",
        help=f"do not write {RESULTS_MD.relative_to(HERE.parent)}",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: children stopped

    signal.signal(signal.SIGTERM, on_term)
    table = run_benchmark(args)
    print(table, end="")
    if not args.no_write:
        RESULTS_MD.write_text(table, encoding="utf-8")
        log(f"written to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
