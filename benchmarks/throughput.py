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
that one run (see LAUNCHER for why not straight from this process). Servers are separate
processes (`python -m workers.simulated`). Children import evaluator/ and workers/ from this
checkout (PYTHONPATH, checked at start); the report records a hash of those sources.

Child modes (used by the harness itself):
  throughput.py _baseline  ...   bare aiohttp + uvloop + orjson closed loop
  throughput.py _reference ...   ThreadPoolExecutor + openai.OpenAI (pip install openai)
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "results-latest.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIO_NAMES = ("zero", "latency", "ratelimit", "pool", "full")

# Scenario parameters (README explains the choices).
# The measuring conditions: 20,000 requests, 256 in flight.
ZERO_C = 128  # evaluator 128 gen + 128 judge; baseline 256 in flight; reference 128 threads
ZERO_PAIRS = 6667  # 20,001 calls
REFERENCE_THREADS = 128
LAT_MEDIAN_MS, LAT_SIGMA = 300.0, 0.5
# 1,024 in flight over two server processes (one alone saturates its event loop near
# 3,000 calls/s on 2 cores, and its lag inflates every latency: README), split as the
# calls are (two generations per judge call) so neither stage's slots bind first:
# 341 + 171 per server.
LAT_SERVERS = 2
LAT_GEN_C, LAT_JUDGE_C = 341, 171
RL_RPM, RL_TPM, RL_C = 6000.0, 30_000_000.0, 64
POOL_LATENCIES_MS, POOL_SIGMA = (20.0, 60.0, 180.0), 0.5
# 32 slots per server, split as the calls are (two generations per judge call).
POOL_GEN_C, POOL_JUDGE_C = 21, 11
POOL_KILL_AT = 0.35  # SIGKILL the fastest server once this share of the 3n calls is answered
FULL_C = 64

# Event-loop lag buckets, as evaluator/looplag.py: upper bounds 0.1 ms .. 100 s, 10 a decade.
LAG_BOUNDS_MS = [0.1 * 10 ** (i / 10) for i in range(61)]


# --------------------------------------------------------------------------- shared bodies
def gen_body(protocol, question: str) -> dict:
    """A generation request exactly as the evaluator builds it (same prompt and sampling)."""
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": protocol.DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ],
        "temperature": protocol.GEN_TEMPERATURE,
        "top_p": protocol.GEN_TOP_P,
        "max_tokens": protocol.GEN_MAX_TOKENS,
    }


def judge_body(protocol, row: dict, a_for: str, a_against: str) -> dict:
    user = (
        f"Issue: {row['issue_description']}\n\n"
        f"Question 1: {row['for_question']}\n\n"
        f"Person 1's response: {a_for}\n\n"
        f"Question 2: {row['against_question']}\n\n"
        f"Person 2's response: {a_against}"
    )
    return {
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


def iter_rows(path: str, limit: int | None):
    import orjson

    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                return
            if line.strip():
                yield orjson.loads(line)


def lag_summary(samples: list[float]) -> dict:
    """p99 as evaluator/looplag.py reports it (upper bound of its bucket), exact p99, max."""
    if not samples:
        return {"lag_p99_ms": None, "lag_p99_exact_ms": None, "lag_max_ms": None}
    s = sorted(samples)
    exact = s[math.ceil(0.99 * len(s)) - 1]
    i = bisect.bisect_left(LAG_BOUNDS_MS, exact)
    return {
        "lag_p99_ms": LAG_BOUNDS_MS[i] if i < len(LAG_BOUNDS_MS) else s[-1],
        "lag_p99_exact_ms": exact,
        "lag_max_ms": s[-1],
        "lag_samples": len(s),
    }


# --------------------------------------------------------------------------- baseline child
def baseline_main(argv: list[str]) -> int:
    """A bare closed loop: what the HTTP stack alone costs for the same requests."""
    p = argparse.ArgumentParser(prog="throughput.py _baseline")
    p.add_argument(
        "--url", required=True, action="append", help="base URL ending in /v1 (repeat: alternate)"
    )
    p.add_argument("--data", required=True)
    p.add_argument("--in-flight", type=int, required=True, help="connector limit: most in flight")
    p.add_argument(
        "--workers",
        type=int,
        help="pairs worked on at once (default in-flight/2: 2 generations each at the peak); "
        "set it to in-flight to keep the connector full whatever the mix",
    )
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)

    import asyncio

    import aiohttp
    import orjson
    import uvloop

    # Same prompts, sampling and schema as the evaluator, so the bodies have the same size.
    from evaluator import protocol

    urls = [u.rstrip("/") + "/chat/completions" for u in args.url]
    counts: dict = {"calls": 0, "errors": 0, "valid": 0, "pairs": 0}
    lag: list[float] = []

    async def post(session: aiohttp.ClientSession, body: dict) -> str | None:
        counts["calls"] += 1
        url = urls[counts["calls"] % len(urls)]  # several servers: take turns
        async with session.post(url, data=orjson.dumps(body)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                counts["errors"] += 1
                return None
        return orjson.loads(raw)["choices"][0]["message"]["content"]

    async def worker(session: aiohttp.ClientSession, it) -> None:
        # Each worker holds one pair: two generations at once, then its judge call.
        for row in it:  # one shared iterator: single-threaded, so no lock needed
            counts["pairs"] += 1
            a_for, a_against = await asyncio.gather(
                post(session, gen_body(protocol, row["for_question"])),
                post(session, gen_body(protocol, row["against_question"])),
            )
            if a_for is None or a_against is None:
                continue
            verdict = await post(session, judge_body(protocol, row, a_for, a_against))
            if verdict is not None and "alignment_score" in orjson.loads(verdict):
                counts["valid"] += 1

    async def lag_sampler(interval_s: float = 0.05) -> None:
        # The evaluator's kind of sampler: a timer's overshoot is how long the loop was busy.
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval_s)
            lag.append(max(0.0, (time.monotonic() - start - interval_s) * 1000.0))

    async def main() -> None:
        t0 = time.monotonic()
        sampler = asyncio.create_task(lag_sampler())
        connector = aiohttp.TCPConnector(limit=args.in_flight)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            it = iter_rows(args.data, args.limit)
            n_workers = args.workers or max(1, args.in_flight // 2)
            await asyncio.gather(*(worker(session, it) for _ in range(n_workers)))
        counts["session_wall_s"] = time.monotonic() - t0
        sampler.cancel()

    uvloop.run(main())
    sys.stdout.write(orjson.dumps({**counts, **lag_summary(lag)}).decode() + "\n")
    return 0 if counts["errors"] == 0 else 1


# --------------------------------------------------------------------------- reference child
def reference_main(argv: list[str]) -> int:
    """The reference design: a thread pool around the official `openai` sync client."""
    p = argparse.ArgumentParser(prog="throughput.py _reference")
    p.add_argument("--url", required=True, action="append", help="base URL ending in /v1")
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=REFERENCE_THREADS)
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)

    import threading
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    from openai import OpenAI

    from evaluator import protocol

    t0 = time.monotonic()
    client = OpenAI(base_url=args.url[0], api_key="x", max_retries=0)
    lock = threading.Lock()
    counts: dict = {"calls": 0, "errors": 0, "valid": 0, "pairs": 0}

    def one_pair(row: dict) -> None:
        calls = valid = errors = 0
        try:
            calls += 1
            a_for = client.chat.completions.create(**gen_body(protocol, row["for_question"]))
            calls += 1
            a_against = client.chat.completions.create(
                **gen_body(protocol, row["against_question"])
            )
            calls += 1
            verdict = client.chat.completions.create(
                **judge_body(
                    protocol,
                    row,
                    a_for.choices[0].message.content,
                    a_against.choices[0].message.content,
                )
            )
            valid = int("alignment_score" in orjson.loads(verdict.choices[0].message.content))
        except Exception:
            errors = 1
        with lock:
            counts["calls"] += calls
            counts["valid"] += valid
            counts["errors"] += errors
            counts["pairs"] += 1

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        for _ in pool.map(one_pair, iter_rows(args.data, args.limit)):
            pass
    counts["session_wall_s"] = time.monotonic() - t0
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0 if counts["errors"] == 0 else 1


# --------------------------------------------------------------------------- processes
def child_env() -> dict[str, str]:
    """Children import evaluator/ and workers/ from this checkout, whatever pip installed.

    (An editable install can point at another clone; `python -m` run from a temp directory
    would then silently benchmark that other code.)
    """
    env = os.environ.copy()
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    return env


def check_imports(cwd: Path, need_openai: bool) -> None:
    code = "import evaluator, workers; print(evaluator.__file__, workers.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
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
    if need_openai:  # checked in a child: importing openai here would grow this process, and
        # a forked child's ru_maxrss starts from its parent's RSS
        probe = subprocess.run([sys.executable, "-c", "import openai"], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit(
                "the zero-latency scenario's reference client needs the `openai` package: "
                "pip install -e '.[bench]'  (or pip install openai)"
            )


def _proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a live process (a server), from /proc."""
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
            if getattr(proc, "_valbench_group", False):
                # A launcher still running (timeout, interrupt): end its client with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
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


class Server:
    """One `python -m workers.simulated` process."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc = proc
        self.url = url  # .../v1
        self.pid = proc.pid

    def stats(self, bodies: bool = False, timeout: float = 10.0) -> dict:
        import orjson

        return orjson.loads(self.stats_raw(bodies, timeout))

    def stats_raw(self, bodies: bool = False, timeout: float = 10.0) -> bytes:
        root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        with urllib.request.urlopen(
            f"{root}/sim/stats" + ("?bodies=1" if bodies else ""), timeout=timeout
        ) as resp:
            return resp.read()

    def cpu_s(self) -> float:
        return _proc_cpu_s(self.pid)


def answered(stats: dict) -> int:
    """Successful chat answers in a /sim/stats reply."""
    k = stats.get("by_kind", {})
    return int(k.get("model", 0)) + int(k.get("judge", 0))


class Poller:
    """Answered calls over time, polled from the servers' /sim/stats during a run.

    Its `tick` is measure()'s on_tick, so times are seconds since the client was spawned.
    Slopes of this timeline give steady-state rates that exclude start-up, ramp-up and tail.
    """

    def __init__(self, servers: list[Server], interval_s: float = 0.25) -> None:
        self.servers = list(servers)
        self.interval_s = interval_s
        self.frozen = 0  # answers of servers no longer polled (killed)
        self.base: dict[int, int] | None = None  # answers before this run (earlier runs)
        self.timeline: list[tuple[float, int]] = []
        self.rejected: list[tuple[float, int]] = []  # 429 answers over time
        self._next = 0.0

    def _answered(self, server: Server, stats: dict) -> int:
        assert self.base is not None
        return answered(stats) - self.base.get(server.pid, 0)

    def tick(self, elapsed: float) -> int | None:
        if elapsed < self._next:
            return None
        self._next = elapsed + self.interval_s
        try:
            stats = {s.pid: s.stats(timeout=2.0) for s in self.servers}
        except OSError:
            return None  # a poll lost to a busy machine: take the next one
        counts = {pid: answered(st) for pid, st in stats.items()}
        if self.base is None:  # the first poll, right after the spawn: nothing sent yet
            self.base = counts
        total = self.frozen + sum(v - self.base[pid] for pid, v in counts.items())
        self.timeline.append((elapsed, total))
        self.rejected.append((elapsed, sum(rate_limited(st) for st in stats.values())))
        return total

    def freeze(self, server: Server, stats: dict) -> None:
        """Stop polling `server` (killed); its answers in `stats` stay counted."""
        self.servers.remove(server)
        self.frozen += self._answered(server, stats)

    def t_at(self, count: float, default: float) -> float:
        return next((t for t, v in self.timeline if v >= count), default)

    def slope(self, t_a: float, t_b: float) -> float:
        pts = [(t, v) for t, v in self.timeline if t_a <= t <= t_b]
        if len(pts) < 2 or pts[-1][0] - pts[0][0] < 0.5:
            return float("nan")
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def steady(self, total: int, lo: float = 0.1, hi: float = 0.9) -> float:
        """Calls/s between lo and hi of the total answered (ramp-up and tail left out)."""
        return self.slope(self.t_at(lo * total, 0.0), self.t_at(hi * total, float("inf")))


def rate_limited(stats: dict) -> int:
    """429 answers in a /sim/stats reply."""
    k = stats.get("by_kind", {})
    return int(k.get("model_429", 0)) + int(k.get("judge_429", 0))


def start_server(
    children: Children,
    tmp: Path,
    data: Path,
    tag: str,
    latency_ms: float = 0.0,
    sigma: float = 0.5,
    rpm: float | None = None,
    tpm: float | None = None,
) -> Server:
    port_file = tmp / f"port-{tag}"
    port_file.unlink(missing_ok=True)
    log_path = tmp / f"server-{tag}.log"
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
        "--latency-sigma",
        f"{sigma:g}",
        # The names the runs below ask for (the simulator, like vLLM, serves only these).
        *("--served-model-name", "m", "--served-model-name", "j"),
        *("--served-model-name", "google/gemma-3-27b-it"),
    ]
    if rpm:
        cmd += ["--rpm-limit", f"{rpm:g}"]
    if tpm:
        cmd += ["--tpm-limit", f"{tpm:g}"]
    with log_path.open("wb") as out:
        proc = children.add(
            subprocess.Popen(cmd, cwd=tmp, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"simulated server exited {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError("simulated server did not write its port file within 60 s")
        time.sleep(0.05)
    return Server(proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1")


# Measured commands run under this tiny launcher. A child's ru_maxrss starts from the RSS of
# the process it was forked from (the kernel keeps the old address space's high-water mark
# across exec), so forking clients straight from this harness, which holds much more than a
# bare interpreter, would inflate their peak RSS. The launcher (python -S, stdlib `os` only,
# ~7 MiB) forks the client, reaps it with wait4 and writes that one process's wall time,
# user+sys CPU and peak RSS to a file.
LAUNCHER = r"""
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write('{"wall_s": %r, "exit": %d, "cpu_s": %r, "maxrss_kib": %d}' % (
        wall, os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, ru.ru_maxrss))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def measure(
    children: Children,
    cmd: list[str],
    cwd: Path,
    log_path: Path,
    servers: list[Server],
    timeout: float,
    on_tick: Callable[[float], None] | None = None,
) -> dict:
    """Run cmd to completion in a fresh process; its own wall time, CPU and peak RSS."""
    import orjson

    result = log_path.with_suffix(".rusage.json")
    result.unlink(missing_ok=True)
    srv0 = sum(s.cpu_s() for s in servers)
    t0 = time.perf_counter()
    with log_path.open("wb") as out:
        proc = children.add(
            subprocess.Popen(
                [sys.executable, "-S", "-c", LAUNCHER, str(result), *cmd],
                cwd=cwd,
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the client too
            )
        )
        proc._valbench_group = True  # type: ignore[attr-defined]
    try:
        deadline = t0 + timeout
        while proc.poll() is None:
            now = time.perf_counter()
            if now > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}")
            if on_tick is not None:
                on_tick(now - t0)
            time.sleep(0.005)
    finally:
        children.stop(proc)
    srv1 = sum(s.cpu_s() for s in servers if s.proc.poll() is None)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"launcher exit {proc.returncode}: {' '.join(cmd)}")
    ru = orjson.loads(result.read_bytes())
    if ru["exit"] != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {ru['exit']}: {' '.join(cmd)}\n{tail}")
    return {
        "wall_s": ru["wall_s"],
        "cpu_s": ru["cpu_s"],
        "rss_mib": ru["maxrss_kib"] / 1024.0,  # KiB on Linux
        "server_cpu_s": srv1 - srv0,
        "log": log_path,
    }


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
        self,
        servers: list[Server],
        data: Path,
        n: int,
        c: int,
        jc: int | None = None,
        extra: tuple[str, ...] = (),
        strict: bool = True,
        warmup: bool = False,
        on_tick: Callable[[float], None] | None = None,
        timeout: float | None = None,
        watched: list[Server] | None = None,
    ) -> dict:
        """One evaluator run; strict: fail the benchmark unless all n pairs are valid."""
        import orjson

        tag = self._next("evaluator")
        out = self.tmp / tag
        cmd = [sys.executable, "-m", "evaluator", "run", "--data", str(data), "--model", "m"]
        for s in servers:
            cmd += ["--base-url", s.url]
        # Our rubric: the paper's prompt is downloaded, and benchmarks run offline.
        cmd += ["--judge-model", "j", "--judge-prompt", "builtin"]
        if len(servers) > 1:
            for s in servers:
                cmd += ["--judge-base-url", s.url]
        cmd += [
            "--out",
            str(out),
            "--quiet",
            "--concurrency",
            str(c),
            "--judge-concurrency",
            str(jc if jc is not None else c),
            *extra,
        ]
        if warmup:
            cmd += ["--limit", str(n)]
        m = measure(
            self.children,
            cmd,
            self.tmp,
            self.tmp / f"{tag}.log",
            servers if watched is None else watched,
            timeout or self.timeout,
            on_tick,
        )
        summary = orjson.loads((out / "summary.json").read_bytes())
        shutil.rmtree(out, ignore_errors=True)  # the checkpoint is not needed: save disk
        sess = summary.get("last_session") or {}
        m.update(
            n=n,
            n_valid=int(summary.get("n_valid", 0)),
            n_failed=int(summary.get("n_failed", 0)),
            session=sess,
            session_wall_s=sess.get("wall_s"),
            calls_sent=sess.get("calls_sent"),
            lag_p99_ms=sess.get("event_loop_lag_p99_ms"),
            lag_max_ms=sess.get("event_loop_lag_max_ms"),
        )
        if strict and not warmup and (m["n_valid"] != n or m["n_failed"] != 0):
            raise RuntimeError(
                f"evaluator run {tag}: n_valid {m['n_valid']}, n_failed {m['n_failed']}, "
                f"expected {n} valid"
            )
        return m

    def _client(
        self,
        mode: str,
        server: Server | list[Server],
        data: Path,
        n: int,
        args: list[str],
        warmup: bool,
        on_tick: Callable[[float], None] | None = None,
    ):
        import orjson

        servers = server if isinstance(server, list) else [server]
        tag = self._next(mode.strip("_"))
        cmd = [sys.executable, str(Path(__file__).resolve()), mode]
        for srv in servers:
            cmd += ["--url", srv.url]
        cmd += ["--data", str(data), *args]
        if warmup:
            cmd += ["--limit", str(n)]
        m = measure(
            self.children, cmd, self.tmp, self.tmp / f"{tag}.log", servers, self.timeout, on_tick
        )
        counts = orjson.loads(m["log"].read_bytes().strip().splitlines()[-1])
        if not warmup and (counts["calls"] != 3 * n or counts["valid"] != n):
            raise RuntimeError(f"{mode} run {tag}: {counts}, expected {3 * n} calls, {n} valid")
        m.update(counts)
        m["n"] = n
        return m

    def baseline(
        self,
        server: Server | list[Server],
        data: Path,
        n: int,
        in_flight: int,
        workers: int | None = None,
        warmup: bool = False,
        on_tick: Callable[[float], None] | None = None,
    ) -> dict:
        args = ["--in-flight", str(in_flight)]
        if workers:
            args += ["--workers", str(workers)]
        return self._client("_baseline", server, data, n, args, warmup, on_tick)

    def reference(self, server: Server, data: Path, n: int, warmup: bool = False) -> dict:
        m = self._client(
            "_reference", server, data, n, ["--threads", str(REFERENCE_THREADS)], warmup
        )
        m["lag_p99_ms"] = m["lag_max_ms"] = None  # threads: no event loop
        return m

    def startup(self, who: str, server: Server) -> dict:
        """Interpreter start-up plus imports only: the fixed cost inside every wall time."""
        if who == "evaluator":
            cmd = [sys.executable, "-m", "evaluator", "run", "--help"]
        elif who == "baseline":
            cmd = [sys.executable, "-c", "import aiohttp, orjson, uvloop, evaluator.protocol"]
        else:
            cmd = [sys.executable, "-c", "import openai, orjson, evaluator.protocol; openai.OpenAI"]
        tag = self._next(f"startup-{who}")
        return measure(
            self.children, cmd, self.tmp, self.tmp / f"{tag}.log", [server], self.timeout
        )


# --------------------------------------------------------------------------- formatting
def med(values) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def fmt_row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], align: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table; columns beyond `align` are right-aligned (numbers)."""
    align = (list(align) + ["---:"] * len(header))[: len(header)]
    return [fmt_row(header), fmt_row(align), *(fmt_row(r) for r in rows)]


def f0(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def f1(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def f2(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def f3(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def lag_cell(runs: list[dict]) -> str:
    p99 = [r.get("lag_p99_ms") for r in runs]
    if all(v is None for v in p99):
        return "n/a (threads)"
    return f"{f1(med(p99))} / {f1(med(r.get('lag_max_ms') for r in runs))}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def describe(who: str, m: dict) -> str:
    calls = 3 * m["n"]
    s = f"{who}: {m['wall_s']:.2f} s, {calls / m['wall_s']:.0f} calls/s"
    if m.get("session_wall_s"):
        s += f" ({calls / m['session_wall_s']:.0f} in session)"
    s += f", CPU {1000 * m['cpu_s'] / calls:.3f} ms/call, {m['rss_mib']:.0f} MiB"
    if m.get("lag_p99_ms") is not None:
        s += f", lag p99 {m['lag_p99_ms']:.1f} ms"
    return s


class Section:
    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str]] = []  # (target, measured, verdict)

    def target(self, what: str, measured: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "**MISSED**")
        self.targets.append((what, measured, verdict))

    def render(self) -> str:
        return "\n".join([f"### {self.title}", "", *self.lines]) + "\n"


def rotate(seq: tuple[str, ...], i: int) -> tuple[str, ...]:
    k = i % len(seq)
    return seq[k:] + seq[:k]


# --------------------------------------------------------------------------- scenarios
def scenario_zero(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    from workers.simulated.data import write_synthetic_dataset

    n = args.pairs or (600 if args.quick else ZERO_PAIRS)
    c = ZERO_C
    sec = Section(f"1. Zero latency ({n} pairs, {3 * n} calls; median of {args.repeats})")
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
    sec.lines += [
        "",
        "In session: the evaluator's `last_session.wall_s` (from the scheduler's start until the "
        "checkpoint is flushed: no start-up, no final report), the clients' time after their "
        "imports. Outside the session = wall − session: interpreter start-up and imports, "
        "and for the evaluator also opening the run and writing its final report. Loop lag p99 is the upper bound of its log bucket (10 a decade), as the "
        "evaluator reports it; max is exact.",
    ]
    return sec


def scenario_latency(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    from workers.simulated.data import write_synthetic_dataset

    n = 2000 if args.quick else 10000
    c, jc = LAT_GEN_C, LAT_JUDGE_C  # per server
    k = LAT_SERVERS
    mean_s = LAT_MEDIAN_MS / 1000.0 * math.exp(LAT_SIGMA**2 / 2)
    in_flight = k * (c + jc)
    little = in_flight / mean_s
    # Two generations per judge call: pairs/s <= min(gen slots/mean/2, judge slots/mean),
    # three calls each. With the 2:1 split this is the Little's-law bound to within 0.1%.
    stage_bound = 3 * min(k * c / mean_s / 2, k * jc / mean_s)
    sec = Section(
        f"2. Lognormal latency, median {LAT_MEDIAN_MS:g} ms (sigma {LAT_SIGMA:g}, mean "
        f"{1000 * mean_s:.0f} ms), {in_flight} in flight over {k} server processes ({n} pairs, "
        f"{3 * n} calls; median of {args.repeats})"
    )
    data = write_synthetic_dataset(tmp / "latency.jsonl", n)
    servers = [
        start_server(bench.children, tmp, data, f"latency-{i}", LAT_MEDIAN_MS, LAT_SIGMA)
        for i in range(k)
    ]
    runs: dict[str, list[dict]] = {"evaluator": [], "baseline": []}

    def run(who: str, size: int, warmup: bool = False) -> dict:
        poller = Poller(servers)
        if who == "evaluator":
            m = bench.evaluator(servers, data, size, c, jc, (), warmup=warmup, on_tick=poller.tick)
        else:
            # Every worker holds a pair and the connector caps the total at 1,024: always
            # full. Its requests take turns between the servers.
            m = bench.baseline(
                servers,
                data,
                size,
                in_flight,
                workers=in_flight,
                warmup=warmup,
                on_tick=poller.tick,
            )
        m["steady"] = poller.steady(3 * size)
        return m

    try:
        for who in runs:
            run(who, 200, warmup=True)
        for i in range(args.repeats):
            for who in rotate(tuple(runs), i):
                m = run(who, n)
                runs[who].append(m)
                log(f"latency run {i + 1}: {describe(who, m)}")
    finally:
        for server in servers:
            bench.children.stop(server.proc)

    calls = 3 * n
    rows = []
    for who, rs in runs.items():
        steady = med(r["steady"] for r in rs)
        rows.append(
            [
                who,
                f"{k}×({c}+{jc})" if who == "evaluator" else f"{in_flight} (shared)",
                f2(med(r["session_wall_s"] for r in rs)),
                f0(med(calls / r["wall_s"] for r in rs)),
                f0(med(calls / r["session_wall_s"] for r in rs)),
                f0(steady),
                f2(steady / little),
                f2(steady / stage_bound) if who == "evaluator" else "n/a",
                f3(1000 * med(r["cpu_s"] for r in rs) / calls),
                f"{100 * med(r['cpu_s'] / r['wall_s'] for r in rs):.0f}%",
                f"{100 * med(r['server_cpu_s'] / r['wall_s'] for r in rs):.0f}%",
                lag_cell(rs),
                f1(med(r["rss_mib"] for r in rs)),
            ]
        )
    sec.lines += table(
        [
            "client",
            "in flight cap",
            "session s",
            "calls/s (spawn to exit)",
            "calls/s (in session)",
            "steady calls/s (10%→90%)",
            f"steady ÷ Little bound {little:.0f}",
            f"steady ÷ stage bound {stage_bound:.0f}",
            "client CPU ms/call",
            "client CPU (of 1 core)",
            "server CPU (of 1 core)",
            "loop lag p99 / max ms",
            "peak RSS MiB",
        ],
        [
            "---",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
            "---:",
        ],
        rows,
    )
    ev = med(r["steady"] for r in runs["evaluator"])  # the target is on the default settings
    sec.lines += [
        "",
        f"Little's-law bound = in flight ÷ mean latency = {in_flight} ÷ {1000 * mean_s:.0f} ms = "
        f"{little:.0f} calls/s. Two simulated server processes share the load: one alone "
        "saturates its own event loop near 3,000 calls/s on this machine, and its lag then "
        "adds to every latency. The evaluator has both as a pool for each stage, with "
        f"{c} generation + {jc} judge slots on each, as the calls are split (two generations "
        "per judge call), so its stage bound, 3 × min(gen ÷ 2, judge) ÷ mean = "
        f"{stage_bound:.0f} calls/s, is the Little's-law bound too; the baseline's requests take "
        "turns. Steady calls/s: slope of the servers' answered-call count (polled every 0.25 s) "
        "between 10% and 90% of the calls, so ramp-up, tail, start-up and the final report are "
        "left out. Client and server CPU are shares of one core over the client's wall time "
        "(server: both processes).",
    ]
    sec.target(
        "latency: evaluator steady calls/s ≥ 0.9 × Little's-law bound",
        f"{ev:.0f} calls/s = {ev / little:.2f} of {little:.0f}",
        ev / little >= 0.9,
    )
    return sec


def scenario_ratelimit(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    from workers.simulated.data import write_synthetic_dataset

    n = 350 if args.quick else 1100
    rps = RL_RPM / 60.0
    sec = Section(
        f"3. Rate-limited server: {RL_RPM:g} req/min, {RL_TPM:g} tokens/min, 1-second windows "
        f"({n} pairs, {3 * n} calls ≈ {3 * n / rps:.0f} s at the limit; median of {args.repeats})"
    )
    data = write_synthetic_dataset(tmp / "ratelimit.jsonl", n)
    # The simulated server has one allowance for every model name; the evaluator keeps a
    # rate bucket per (URL, key, model), so both stages name one model to share one bucket.
    same = ("--judge-model", "m")
    variants = (
        ("learns from headers (no limits given)", same),
        (
            f"--rpm {RL_RPM:g} --tpm {RL_TPM:g} given",
            (*same, "--rpm", f"{RL_RPM:g}", "--tpm", f"{RL_TPM:g}"),
        ),
    )
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for i in range(args.repeats):
        for name, extra in variants if i % 2 == 0 else variants[::-1]:
            # A fresh server per run: its buckets start full and its counts at zero.
            server = start_server(bench.children, tmp, data, f"rl-{i}", rpm=RL_RPM, tpm=RL_TPM)
            poller = Poller([server], interval_s=0.5)
            try:
                m = bench.evaluator(
                    [server], data, n, RL_C, extra=extra, strict=False, on_tick=poller.tick
                )
                st = server.stats()
            finally:
                bench.children.stop(server.proc)
            m["accepted"] = answered(st)
            m["r429"] = rate_limited(st)
            # 429s in the first seconds (before the evaluator can know the limit) and after.
            t_first = poller.t_at(1, 0.0)
            early = [v for t, v in poller.rejected if t <= t_first + 2.0]
            m["r429_early"] = early[-1] if early else 0
            m["requests_total"] = int(st["requests_total"])
            m["achieved_rpm"] = m["accepted"] / m["session_wall_s"] * 60.0
            # The server's request bucket starts full (one second's worth): without that bonus
            # at most rps x session seconds can be answered.
            m["achieved_share"] = (m["accepted"] - rps) / (rps * m["session_wall_s"])
            m["steady_share"] = poller.steady(m["accepted"]) / rps
            m["share_429"] = m["r429"] / max(1, m["requests_total"])
            eps = m["session"].get("endpoints", {})
            m["conc"] = "/".join(
                f0(e[0].get("concurrency_limit")) if e else "?"
                for e in (eps.get("generation", []), eps.get("judge", []))
            )
            results[name].append(m)
            log(
                f"rate limit run {i + 1} ({name}): {m['session_wall_s']:.1f} s, "
                f"{m['achieved_rpm']:.0f} req/min, {m['achieved_share']:.1%} of allowed "
                f"(initial bucket left out), {m['steady_share']:.1%} steady, "
                f"{m['r429']} 429s ({m['share_429']:.2%}), n_valid {m['n_valid']}/{n}"
            )
    rows = []
    for name, rs in results.items():
        ratio = med(r["achieved_share"] for r in rs)
        share = med(r["share_429"] for r in rs)
        wall = med(r["session_wall_s"] for r in rs)
        valid = min(r["n_valid"] for r in rs)
        rows.append(
            [
                name,
                f1(wall),
                f0(med(r["accepted"] for r in rs)),
                f0(med(r["r429"] for r in rs)),
                f0(med(r["r429"] - r["r429_early"] for r in rs)),
                f"{100 * share:.2f}%",
                f0(med(r["achieved_rpm"] for r in rs)),
                f"{100 * ratio:.1f}%",
                f"{100 * med(r['steady_share'] for r in rs):.1f}%",
                ", ".join(r["conc"] for r in rs),
                f"{valid}/{n}",
                f3(1000 * med(r["cpu_s"] for r in rs) / (3 * n)),
                f1(med(r["rss_mib"] for r in rs)),
            ]
        )
        sec.target(
            f"rate limit, {name}: achieved ≥ 90% of allowed over ≥ 30 s",
            f"{100 * ratio:.1f}% over {wall:.0f} s",
            ratio >= 0.9 and wall >= 30,
        )
        sec.target(f"rate limit, {name}: 429 share < 1%", f"{100 * share:.2f}%", share < 0.01)
    sec.lines += table(
        [
            "evaluator",
            "session s",
            "answered",
            "429s",
            "429s after the first 2 s",
            "429 share",
            "answered per min",
            "achieved ÷ allowed (whole run)",
            "achieved ÷ allowed (steady 10%→90%)",
            "final concurrency gen/judge (per run)",
            "valid pairs (worst run)",
            "client CPU ms/call",
            "peak RSS MiB",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:"]
        + ["---:", "---:"],
        rows,
    )
    sec.lines += [
        "",
        f"Answered per min = requests the server answered 200 ÷ the evaluator's session time × "
        f"60. The server's request bucket starts full (one second's worth, {rps:.0f} requests), "
        f"so achieved ÷ allowed (whole run) = (answered − {rps:.0f}) ÷ ({rps:.0f}/s × session "
        "s), start and tail included; the steady figure is the slope of the answered count "
        "(polled every 0.5 s) between 10% and 90% of the calls. '429s after the first 2 s': "
        "counted from 2 s after the first answer (the poll nearest it), i.e. after the "
        "evaluator has seen the limit in the x-ratelimit headers. 429 share = 429 answers ÷ all "
        "requests the server got. The same server serves generations and judge calls; with "
        "--rpm/--tpm given the evaluator's two stages share one bucket (same URL, key and model: "
        "both stages name one model here, as the server has one allowance for all). "
        "Requests are ≈ 4,170 tokens (generation) and ≈ 2,990 (judge) as the server counts "
        f"them (body bytes ÷ 4 + max_tokens), so {rps:.0f} req/s is ≈ 0.38 M tokens/s of the "
        f"{RL_TPM / 60e6:.1f} M/s allowed: the request limit binds.",
    ]
    return sec


def scenario_pool(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    import orjson

    from workers.simulated.data import write_synthetic_dataset

    n = 1500 if args.quick else 4000
    c, jc = POOL_GEN_C, POOL_JUDGE_C
    calls = 3 * n
    means = [lat / 1000.0 * math.exp(POOL_SIGMA**2 / 2) for lat in POOL_LATENCIES_MS]
    # Capacity of a server (the definition): its concurrency cap ÷ its mean latency;
    # its cap is c generation + jc judge calls.
    cap = [(c + jc) / m for m in means]
    # Pipeline bound: two generations per judge call, so 3 × min(c / 2, jc) calls per mean.
    pipe = [3 * min(c / 2, jc) / m for m in means]
    sec = Section(
        f"4. Endpoint pool: three servers (median latency {', '.join(f'{x:g}' for x in POOL_LATENCIES_MS)} ms, "
        f"sigma {POOL_SIGMA:g}), {c}+{jc} in flight on each, the fastest SIGKILLed after "
        f"{POOL_KILL_AT:.0%} of the calls ({n} pairs, {calls} calls; median of {args.repeats})"
    )
    data = write_synthetic_dataset(tmp / "pool.jsonl", n)
    results: list[dict] = []
    for i in range(args.repeats):
        servers = [
            start_server(bench.children, tmp, data, f"pool-{i}-{j}", lat, POOL_SIGMA)
            for j, lat in enumerate(POOL_LATENCIES_MS)
        ]
        fast, survivors = servers[0], servers[1:]
        poller = Poller(servers, interval_s=0.2)
        st: dict = {"killed": None}

        def on_tick(elapsed: float, fast=fast, poller=poller, st=st, i=i) -> None:
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
        results.append(m)
        log(
            f"pool run {i + 1}: before kill {m['rate_before']:.0f} calls/s, after "
            f"{m['rate_after']:.0f} calls/s; n_valid {m['n_valid']}/{n}, failed {m['n_failed']}, "
            f"distinct bodies {m['distinct']}/{calls}, in flight at kill {m['inflight_at_kill']}, "
            f"answered there after the snapshot {m['window_answers']}, re-sent to a survivor "
            f"{m['resent']}"
        )
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
    return sec


def scenario_full(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    from workers.simulated.data import write_synthetic_dataset

    small = 2000 if args.quick else 10000
    big = 20000 if args.quick else 115000
    sec = Section(
        f"5. Full-size synthetic run: {big} pairs ({3 * big} calls) at zero latency, 1 run; "
        f"{small} pairs for comparison (median of {args.repeats})"
    )
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
    return sec


SCENARIOS = {
    "zero": scenario_zero,
    "latency": scenario_latency,
    "ratelimit": scenario_ratelimit,
    "pool": scenario_pool,
    "full": scenario_full,
}


# --------------------------------------------------------------------------- driver
def source_digest() -> str:
    """A short hash of the evaluator's and workers' sources: which code the figures belong to."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((*REPO.glob("evaluator/**/*.py"), *REPO.glob("workers/**/*.py"))):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
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
    usable = len(os.sched_getaffinity(0))  # `taskset -c 0,1` shows as 2 of the host's CPUs
    cpus = f"{usable} CPUs" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} CPUs"
    return f"{cpus} ({model or platform.machine()}), {platform.system()}"


def run_benchmark(args: argparse.Namespace, command: str) -> str:
    sys.path.insert(0, str(REPO))  # this checkout's code, as for the children
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone()
    digest = source_digest()
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="valbench-throughput-"))
    sections: list[Section] = []
    try:
        check_imports(tmp, need_openai="zero" in args.scenarios)
        bench = Bench(children, tmp, timeout=args.run_timeout)
        for name in args.scenarios:
            t = time.perf_counter()
            log(f"scenario {name}: starting")
            sections.append(SCENARIOS[name](bench, args, tmp))
            log(f"scenario {name}: done in {time.perf_counter() - t:.0f} s")
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    sources = f"{digest} (from {REPO})"
    if source_digest() != digest:
        sources += " (WARNING: evaluator/workers sources changed during the run)"
    head = [
        f"Run started {started_at.strftime('%Y-%m-%d %H:%M:%S %Z')} on {_host()}; python "
        f"{platform.python_version()}; command `{command}`; scenarios {','.join(args.scenarios)}; "
        f"benchmark wall time {time.perf_counter() - started:.0f} s; evaluator/workers sources "
        f"{sources}. All servers are the SIMULATED backend (`workers.simulated`), all data "
        "synthetic.",
        "",
        "#### Targets",
        "",
    ]
    head += table(
        ["target", "measured", "verdict"],
        ["---", "---", "---"],
        [list(t) for s in sections for t in s.targets],
    )
    return "\n".join(head) + "\n\n" + "\n".join(s.render() for s in sections)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_baseline"]:
        return baseline_main(argv[1:])
    if argv[:1] == ["_reference"]:
        return reference_main(argv[1:])
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
    report = run_benchmark(args, command)
    print(report, end="")
    if not args.no_write:
        RESULTS_MD.write_text(report, encoding="utf-8")
        log(f"written to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
