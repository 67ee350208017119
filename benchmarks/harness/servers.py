"""Simulated servers (`python -m workers.simulated`) as child processes, and their counts."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .children import Children, child_env, proc_cpu_s

# The names the benchmarks' runs ask for (the simulator, like vLLM, serves only these).
SERVED_NAMES = ("m", "j", "google/gemma-3-27b-it")


class Server:
    """One `python -m workers.simulated` process."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path | None = None) -> None:
        self.proc = proc
        self.url = url  # .../v1
        self.pid = proc.pid
        self.log_path = log_path

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
        return proc_cpu_s(self.pid)


def spawn_server(
    children: Children, workdir: Path, tag: str, flags: Sequence[str], timeout_s: float = 60.0
) -> Server:
    """Start a simulated server with `flags` on a free port; return once it listens.

    Its output goes to workdir/server-TAG.log, shown if it exits before writing its port.
    """
    port_file = workdir / f"port-{tag}"
    port_file.unlink(missing_ok=True)
    log_path = workdir / f"server-{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "workers.simulated",
        *("--port", "0", "--port-file", str(port_file)),
        *flags,
    ]
    with log_path.open("wb") as out:
        proc = children.add(
            subprocess.Popen(
                cmd, cwd=workdir, env=child_env(), stdout=out, stderr=subprocess.STDOUT
            )
        )
    deadline = time.monotonic() + timeout_s
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"simulated server exited {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"simulated server did not write its port file within {timeout_s:.0f} s"
            )
        time.sleep(0.05)
    return Server(proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1", log_path)


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
    """A server answering from `data`'s pairs after a lognormal latency, maybe rate-limited."""
    flags = [
        *("--dataset", str(data)),
        *("--latency-ms", f"{latency_ms:g}", "--latency-sigma", f"{sigma:g}"),
    ]
    for name in SERVED_NAMES:
        flags += ["--served-model-name", name]
    if rpm:
        flags += ["--rpm-limit", f"{rpm:g}"]
    if tpm:
        flags += ["--tpm-limit", f"{tpm:g}"]
    return spawn_server(children, tmp, tag, flags)


def answered(stats: dict) -> int:
    """Successful chat answers in a /sim/stats reply."""
    k = stats.get("by_kind", {})
    return int(k.get("model", 0)) + int(k.get("judge", 0))


def rate_limited(stats: dict) -> int:
    """429 answers in a /sim/stats reply."""
    k = stats.get("by_kind", {})
    return int(k.get("model_429", 0)) + int(k.get("judge_429", 0))


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
