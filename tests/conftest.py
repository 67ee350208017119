"""Shared fixtures: real simulated servers on loopback, synthetic datasets, CLI runners."""

from __future__ import annotations

import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from evaluator.cli import main
from workers.simulated import SimConfig, ThreadedServer
from workers.simulated.data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent

# The simulated server is strict, as vLLM is: it serves only the names it is given and
# answers any other with vLLM's 404. Test servers serve the names the tests use (vLLM
# takes several --served-model-name aliases the same way); a test about a name that is
# not served starts its server with its own `served_names`.
TEST_MODELS = (
    "m",
    "m1",
    "m2",
    "j",
    "judge-a",
    "judge-b",
    "other",
    "my-llama",
    "model-a",
    "same",
    "sim-model",
    "sim-judge",
    "claude-sim",
    "gpt-4o-mini",
    "gpt-4.1",
    "simulated-model",
    "simulated-judge",
    "claude-judge-sim",
    "claude-sonnet-4-5",
    "google/gemma-3-27b-it",  # the default judge
)


# Fixtures that start real servers or processes: a test using one belongs to the slow tier.
SLOW_FIXTURES = frozenset({"sim_server", "sim_process", "hostile", "reference_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the fast tier fast: a test that starts real servers must be marked slow."""
    unmarked = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is None
        and SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start real servers (fixtures "
            + ", ".join(sorted(SLOW_FIXTURES))
            + ") but are not marked slow; add @pytest.mark.slow (or a module pytestmark): "
            + ", ".join(unmarked)
        )


def _with_root_on_path(pythonpath: str | None) -> str:
    return os.pathsep.join(p for p in (str(ROOT), pythonpath) if p)


@pytest.fixture(autouse=True, scope="session")
def _caches_in_tmp(tmp_path_factory):
    """matplotlib (the report's plots) writes its font cache to ~/.cache/matplotlib unless
    told otherwise: for the tests, and the processes they start, it goes to a temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))
        yield


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temp dir, as do the processes it starts: what a run
    writes relative to the working directory (runs/.last-run, a default --out) stays
    there, and a developer's ./.env is not read. This checkout stays first on the
    path of every child process (evaluators, managed servers), wherever it runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", _with_root_on_path(os.environ.get("PYTHONPATH")))


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


@dataclass(frozen=True)
class TLSFiles:
    """A certificate authority made for the test session and a server certificate it signed."""

    ca_pem: Path  # the CA's certificate: what a client must trust
    cert_pem: Path  # the server's certificate chain
    key_pem: Path  # the server's private key

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))


def make_tls(directory: Path, *hosts: str) -> TLSFiles:
    """A new CA and a certificate for `hosts`, as PEM files in `directory` (trustme)."""
    import trustme  # the test extra; imported here so only TLS tests need it

    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    with files.cert_pem.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(files.key_pem))
    return files


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> TLSFiles:
    """A CA made at test time and its certificate for 127.0.0.1 and localhost."""
    return make_tls(tmp_path_factory.mktemp("tls"), "127.0.0.1", "localhost")


@pytest.fixture
def sim_server():
    """Factory: a simulated server on its own thread (https given `ssl_context`); stopped at
    teardown."""
    servers: list[ThreadedServer] = []

    def start(ssl_context: ssl.SSLContext | None = None, **kwargs) -> ThreadedServer:
        kwargs.setdefault("served_names", TEST_MODELS)
        server = ThreadedServer(SimConfig(**kwargs), ssl_context=ssl_context)
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

    def __init__(
        self, tmp_path: Path, *args: str, port: int = 0, tls: TLSFiles | None = None
    ) -> None:
        SimProcess._count += 1
        self.tls = tls
        if tls is not None:
            args = (*args, "--tls-cert", str(tls.cert_pem), "--tls-key", str(tls.key_pem))
        port_file = tmp_path / f"sim-{SimProcess._count}.port"
        if "--served-model-name" not in args and "--any-model" not in args:
            args = (*args, *(a for m in TEST_MODELS for a in ("--served-model-name", m)))
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
        scheme = "https" if tls is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{port_file.read_text()}/v1"

    def stats(self, bodies: bool = False) -> dict:
        import urllib.request

        url = self.base_url.replace("/v1", "/sim/stats") + ("?bodies=1" if bodies else "")
        context = self.tls.client_context() if self.tls is not None else None
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
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

    def start(*args: str, port: int = 0, tls: TLSFiles | None = None) -> SimProcess:
        p = SimProcess(tmp_path, *args, port=port, tls=tls)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def evaluator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaluator", *map(str, args)]


class _LiveEnv(Mapping):
    """os.environ as it is when a subprocess starts (with a test's monkeypatched variables),
    plus unbuffered output, and this checkout first on the path, so an evaluator started
    from a temp dir imports it."""

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": _with_root_on_path(os.environ.get("PYTHONPATH")),
        }

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
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def run_evaluator(*args, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m evaluator ARGS` as a separate process, run to the end, its output captured."""
    return subprocess.run(
        evaluator_cmd(*args),
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def probe_shas(out: Path) -> set[str]:
    """sha256 of the preflight's test-call bodies for the run in `out` (what a server's
    per-body counts hold besides the run's own calls: one judge test call per session)."""
    import hashlib

    from evaluator.config import RunConfig
    from evaluator.preflight import probe_bodies
    from evaluator.store import Store

    with Store.open(out, create=False, lock=False) as store:
        config = RunConfig.from_dict(store.get_meta("config"))
    return {hashlib.sha256(b).hexdigest() for b in probe_bodies(config).values()}


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


@pytest.fixture
def hostile():
    """Start a hostile server (workers.simulated.hostile) for the test: `hostile(Hostile(...),
    **SimConfig fields)`; it serves TEST_MODELS unless told otherwise. All are stopped after."""
    from workers.simulated.hostile import ThreadedHostileServer

    servers: list[ThreadedHostileServer] = []

    def start(behaviour, **config) -> ThreadedHostileServer:
        config.setdefault("served_names", TEST_MODELS)
        server = ThreadedHostileServer(SimConfig(**config), behaviour)
        server.__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
