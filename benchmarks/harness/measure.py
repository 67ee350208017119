"""Measuring one client run: a fresh process's wall time, CPU and peak RSS, and the runs.

`measure` runs any command under LAUNCHER; `Bench` builds the commands of the throughput
benchmark's clients (the evaluator, the bare-aiohttp baseline, the openai+threads reference),
runs them through `measure` and checks that each did all of its work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .children import BENCHMARKS, Children, child_env
from .clients import REFERENCE_THREADS
from .servers import Server

THROUGHPUT = BENCHMARKS / "throughput.py"  # its child modes are the comparison clients


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
    ok_exits: tuple[int, ...] = (0,),
) -> dict:
    """Run cmd to completion in a fresh process; its own wall time, CPU and peak RSS.

    Its output goes to log_path; an exit status not in ok_exits fails the benchmark.
    """
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
            ),
            group=True,
        )
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
    if ru["exit"] not in ok_exits:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {ru['exit']}: {' '.join(cmd)}\n{tail}")
    return {
        "wall_s": ru["wall_s"],
        "cpu_s": ru["cpu_s"],
        "rss_mib": ru["maxrss_kib"] / 1024.0,  # KiB on Linux
        "server_cpu_s": srv1 - srv0,
        "exit": ru["exit"],
        "log": log_path,
    }


class Bench:
    """The throughput benchmark's client runs, each numbered and logged under `tmp`."""

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
        cmd = [sys.executable, str(THROUGHPUT), mode]
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
