"""Shared fixtures: real simulated servers on loopback, synthetic datasets, CLI runners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from evaluator.__main__ import main
from workers.simulated import SimConfig, ThreadedServer
from workers.simulated.data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def synthetic(tmp_path: Path):
    """Factory: a synthetic JSONL dataset with n pairs."""

    def make(n: int, name: str = "pairs.jsonl") -> Path:
        return write_synthetic_dataset(tmp_path / name, n)

    return make


@pytest.fixture
def sim_server():
    """Factory: a simulated server on its own thread; stopped at teardown."""
    servers: list[ThreadedServer] = []

    def start(**kwargs) -> ThreadedServer:
        server = ThreadedServer(SimConfig(**kwargs))
        server.__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def read_summary(out: Path) -> dict:
    return orjson.loads((out / "summary.json").read_bytes())


def read_results(out: Path) -> list[dict]:
    return [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]


class SimProcess:
    """The simulated server as a separate process (survives the evaluator being killed)."""

    _count = 0

    def __init__(self, tmp_path: Path, *args: str, port: int = 0) -> None:
        SimProcess._count += 1
        port_file = tmp_path / f"sim-{SimProcess._count}.port"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.simulated",
                "--port",
                str(port),
                "--port-file",
                str(port_file),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"simulated server did not start: {self.proc.stderr.read().decode()}"
                )
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def stats(self, bodies: bool = False) -> dict:
        import urllib.request

        url = self.base_url.replace("/v1", "/sim/stats") + ("?bodies=1" if bodies else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            return orjson.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def sim_process(tmp_path: Path):
    procs: list[SimProcess] = []

    def start(*args: str, port: int = 0) -> SimProcess:
        p = SimProcess(tmp_path, *args, port=port)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def evaluator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaluator", *map(str, args)]


SUBPROCESS_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
