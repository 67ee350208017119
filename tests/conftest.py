"""Shared fixtures: real simulated servers on loopback, synthetic datasets, CLI runners."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from evaluator.__main__ import main
from workers.simulated import SimConfig, ThreadedServer
from workers.simulated.data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path_factory, monkeypatch):
    """Every test gets its own empty valbench cache, and nothing it runs can download:
    the reference repository's URL points at a closed local port and the hub is offline
    (subprocesses inherit both). A test that wants the paper's prompt serves a stand-in."""
    monkeypatch.setenv("VALBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("valbench-cache")))
    monkeypatch.setenv("VALBENCH_REFERENCE_URL_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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


@pytest.fixture
def reference_server(monkeypatch):
    """Factory: the stand-in of the authors' evaluator_flow.py served on loopback, and pinned
    (in this process) as the paper's prompt; see tests/standins.py."""
    from evaluator import paper_prompt
    from tests.standins import STANDIN_PATH, STANDIN_PIN, STANDIN_SOURCE, FileServer

    servers: list[FileServer] = []

    def start(body: bytes = STANDIN_SOURCE) -> FileServer:
        server = FileServer({STANDIN_PATH: body}).__enter__()
        servers.append(server)
        monkeypatch.setattr(paper_prompt, "PAPER", STANDIN_PIN)
        monkeypatch.setenv(paper_prompt.URL_BASE_ENV, server.base_url)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def run_args(
    data, base_url, out, *extra, model: str = "m", judge_prompt: str | None = "builtin"
) -> list:
    """Arguments for a quiet `run` of `model` at `base_url`; `extra` flags go last.

    The judge prompt is our builtin rubric unless asked otherwise: `run`'s default, the
    paper's prompt, is downloaded, and tests download nothing (see _no_downloads)."""
    prompt = ["--judge-prompt", judge_prompt] if judge_prompt else []
    return [
        "run",
        "--data",
        data,
        "--model",
        model,
        "--base-url",
        base_url,
        "--out",
        out,
        "--quiet",
        *prompt,
        *extra,
    ]


def run_eval(data, base_url, out, *extra, model: str = "m", judge_prompt="builtin") -> int:
    """A quiet `run` in this process; returns the exit code."""
    return run_cli(*run_args(data, base_url, out, *extra, model=model, judge_prompt=judge_prompt))


def run_demo(out, *extra) -> int:
    """A quiet `demo` with no simulated latency, in this process; returns the exit code."""
    return run_cli("demo", "--out", out, "--quiet", "--latency-ms", "0", *extra)


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


class _LiveEnv(Mapping):
    """os.environ as it is when a subprocess starts (with a test's monkeypatched variables),
    plus unbuffered output."""

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def __getitem__(self, key: str) -> str:
        return self._env()[key]

    def __iter__(self):
        return iter(self._env())

    def __len__(self) -> int:
        return len(self._env())


SUBPROCESS_ENV = _LiveEnv()


def spawn_run(
    data, base_url, out, *extra, model: str = "m", stderr=subprocess.PIPE
) -> subprocess.Popen:
    """A quiet `run` as a separate process, left running (to be signalled or killed)."""
    return subprocess.Popen(
        evaluator_cmd(*run_args(data, base_url, out, *extra, model=model)),
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def run_evaluator(*args, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m evaluator ARGS` as a separate process, run to the end, its output captured."""
    return subprocess.run(
        evaluator_cmd(*args),
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checkpoint_calls(db: Path, status: str, column: str = "key") -> list[str]:
    """`column` of every call the checkpoint at `db` records with `status` (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            r[0] for r in conn.execute(f"SELECT {column} FROM calls WHERE status = ?", (status,))
        ]
    finally:
        conn.close()


def checkpoint_calls_so_far(db: Path, status: str, column: str = "key") -> list[str]:
    """As checkpoint_calls, but empty while the run has not created its store or schema yet."""
    if not db.exists():
        return []
    try:
        return checkpoint_calls(db, status, column)
    except sqlite3.OperationalError:
        return []
