"""Child processes: the checkout's code in every child, and one owner that stops them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    """Fail unless a child started in `cwd` imports evaluator/ and workers/ from REPO."""
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


def proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a live process (a server), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")


class Children:
    """Every process a benchmark starts, so that every exit path can stop them.

    Use it as a context manager (`with Children() as children:`): leaving the block, by any
    path, stops whatever is still running.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.groups: set[int] = set()  # pids that lead a process group (the launcher's)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def add(self, proc: subprocess.Popen, group: bool = False) -> subprocess.Popen:
        """Own `proc`; group: it leads its own process group, stopped as a whole."""
        self.procs.append(proc)
        if group:
            self.groups.add(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.returncode is None and proc.poll() is None:
            if proc.pid in self.groups:
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
        self.groups.discard(proc.pid)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except Exception:  # keep stopping the others
                pass
