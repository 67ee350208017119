"""The operating-system side of managed servers (workers.vllm_servers): free ports,
process groups, pid files that outlive a SIGKILLed evaluator, and a log's last lines."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import orjson

log = logging.getLogger("evaluator")

__all__ = ["free_ports", "log_tail", "signal_group", "start_time", "stop_leftover"]


def free_ports(host: str, n: int) -> list[int]:
    """`n` distinct ports free right now. All are held open until all are chosen, so
    none repeats; a server binding it later races only with unrelated programs."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # the id was reused by someone else's process: not ours
        return False


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [t.strip() for t in text.splitlines() if t.strip()][-lines:]
    return " | ".join(tail)


def stop_leftover(pid_path: Path) -> None:
    """Stop a server recorded in `pid_path` that is still running (its evaluator was
    SIGKILLed and could not stop it); otherwise it would hold its GPUs and port."""
    try:
        record = orjson.loads(pid_path.read_bytes())
        pid, started = int(record["pid"]), record.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if started is None or start_time(pid) != started:
        return  # gone, or the pid now belongs to another process
    log.warning("stopping a server left running by an earlier evaluator (pid %d)", pid)
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_group(pid, signal.SIGKILL)
