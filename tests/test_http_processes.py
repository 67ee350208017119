"""HTTP helper processes (--http-processes): same answers, killed helpers, Ctrl-C, GC settings.

Everything here runs real processes over real HTTP against the simulated server.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from evaluator.store import DB_NAME
from tests.conftest import (
    checkpoint_calls,
    checkpoint_calls_so_far,
    read_results,
    read_summary,
    run_cli,
    run_eval,
    spawn_run,
)
from workers import http_processes
from workers.base import Completion, ErrorClass
from workers.client import EndpointConfig
from workers.gctune import session_gc
from workers.http_processes import HTTPProcesses, RemoteClient
from workers.providers import get_provider

HELPER = "workers.http_processes"


def _helpers_of(pid: int) -> list[int]:
    """Live helper processes started by process `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and HELPER in cmd and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _verdicts(out: Path) -> list[tuple]:
    return sorted(
        (r["id"], r["for_response"], r["against_response"], r["verdict"], r["status"])
        for r in read_results(out)
    )


def test_run_through_helpers_gives_the_same_results(tmp_path, synthetic, sim_server):
    data = synthetic(60)
    server = sim_server(persona="mixture", seed=3)
    inproc, helped = tmp_path / "in", tmp_path / "helped"
    assert run_eval(data, server.base_url, inproc) == 0
    before = server.stats()["requests_total"]
    assert run_eval(data, server.base_url, helped, "--http-processes", "2") == 0
    assert server.stats()["requests_total"] - before == 180  # every call sent once, no more
    assert read_summary(helped)["n_valid"] == 60
    assert _verdicts(helped) == _verdicts(inproc)
    # The same request bodies, so the same content keys: resumable either way.
    assert sorted(checkpoint_calls(helped / DB_NAME, "done")) == sorted(
        checkpoint_calls(inproc / DB_NAME, "done")
    )


def test_killed_helper_is_replaced_and_nothing_is_lost(tmp_path, synthetic, sim_process):
    data = synthetic(300)
    server = sim_process("--dataset", str(data), "--latency-ms", "40")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--http-processes", "2", "--concurrency", "16")
    try:
        deadline = time.monotonic() + 60
        while len(set(checkpoint_calls_so_far(out / DB_NAME, "done"))) < 60:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        helpers = _helpers_of(proc.pid)
        assert len(helpers) == 2
        os.kill(helpers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert "starting it again" in err.decode()
    summary = read_summary(out)
    assert summary["n_valid"] == 300 and summary["n_failed"] == 0
    assert not _helpers_of(proc.pid)


def test_ctrl_c_drains_through_helpers_and_leaves_none_behind(tmp_path, synthetic, sim_process):
    data = synthetic(200)
    server = sim_process("--dataset", str(data), "--latency-ms", "30")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--http-processes", "2", "--concurrency", "8")
    deadline = time.monotonic() + 60
    while len(set(checkpoint_calls_so_far(out / DB_NAME, "done"))) < 30:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    helpers = _helpers_of(proc.pid)
    assert len(helpers) == 2
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 75
    assert all(not Path(f"/proc/{pid}").exists() for pid in helpers)
    # Drained, not abandoned: every call sent was answered and recorded, none in flight.
    assert checkpoint_calls(out / DB_NAME, "started") == []
    assert run_cli("--resume", "--out", out, "--quiet") == 0
    bodies = server.stats(bodies=True)["bodies"]
    assert all(n == 1 for n in bodies.values())  # nothing sent twice across the stop
    assert read_summary(out)["n_valid"] == 200


def _body(text: str = "Argue for tea.") -> bytes:
    body = get_provider("openai").build_body(
        "m", "sys", text, temperature=0.0, top_p=1.0, max_tokens=16
    )
    return orjson.dumps(body)


def test_helper_deaths_past_the_limit_fail_as_fatal(sim_server, monkeypatch):
    server = sim_server(latency_median_ms=600.0, latency_sigma=0.0)
    monkeypatch.setattr(http_processes, "MAX_RESTARTS", 1)

    async def scenario() -> list:
        config = EndpointConfig(base_url=server.base_url, name="model endpoint")
        group = HTTPProcesses(1)
        client = RemoteClient(get_provider("openai").client(config), group)
        async with group, client:
            ok = await client.attempt(_body())
            pending = asyncio.create_task(client.attempt(_body("in flight")))
            await asyncio.sleep(0.3)  # the call is in the helper, waiting for its answer
            os.kill(group._helpers[0].proc.pid, signal.SIGKILL)
            lost = await pending
            again = await client.attempt(_body())  # restarts the helper (1 of 1)
            os.kill(group._helpers[0].proc.pid, signal.SIGKILL)
            await group._helpers[0].reader_task
            fatal = await client.attempt(_body())
            return [ok, lost, again, fatal]

    ok, lost, again, fatal = asyncio.run(scenario())
    assert isinstance(ok.result, Completion)
    assert lost.result.error_class is ErrorClass.TRANSIENT
    assert "helper process exited" in lost.result.message
    assert isinstance(again.result, Completion)
    assert fatal.result.error_class is ErrorClass.FATAL


@pytest.mark.parametrize("frozen", [False, True])
def test_session_gc_restores_the_collector(frozen):
    before = gc.get_threshold()
    if frozen:
        gc.freeze()
    count = gc.get_freeze_count()
    try:
        with session_gc(young_threshold=12_345):
            assert gc.get_threshold()[0] == max(12_345, before[0])
            assert gc.get_freeze_count() >= count
            assert gc.isenabled()
        assert gc.get_threshold() == before
        assert (gc.get_freeze_count() > 0) is frozen
    finally:
        gc.unfreeze()
