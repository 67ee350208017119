"""Crash and resume: SIGKILL mid-run, then --resume, proven from the server's request counter."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from evaluator.store import DB_NAME, Store
from tests.conftest import (
    checkpoint_calls,
    checkpoint_calls_so_far,
    probe_shas,
    read_summary,
    run_cli,
    run_eval,
    run_evaluator,
    spawn_run,
)

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

N_PAIRS = 240


def _shas(db, status: str = "done") -> set[str]:
    return set(checkpoint_calls(db, status, "body_sha"))


def _wait_for_done(db, at_least: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if len(set(checkpoint_calls_so_far(db, "done", "body_sha"))) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("run made no progress")


def test_sigkill_then_resume_sends_no_completed_call_twice(tmp_path, synthetic, sim_process):
    data = synthetic(N_PAIRS)
    server = sim_process("--dataset", str(data), "--latency-ms", "20", "--persona", "consistent")
    out = tmp_path / "run"
    flags = ("--judge-model", "j", "--concurrency", "8", "--judge-concurrency", "8")
    proc = spawn_run(data, server.base_url, out, *flags)
    db = out / DB_NAME
    _wait_for_done(db, N_PAIRS // 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    done_at_kill = _shas(db)
    started_at_kill = _shas(db, "started")
    time.sleep(0.3)  # let the server finish reading requests already on the wire
    sent_at_kill = set(server.stats(bodies=True)["bodies"])
    assert 0 < len(done_at_kill) < 3 * N_PAIRS

    resumed = run_evaluator("--resume", "--out", out, "--quiet", timeout=180)
    assert resumed.returncode == 0, resumed.stderr

    stats = server.stats(bodies=True)
    bodies = {k: n for k, n in stats["bodies"].items() if k not in probe_shas(out)}
    sent_at_kill -= probe_shas(out)
    # No call completed before the kill was sent again.
    assert all(bodies[sha] == 1 for sha in done_at_kill)
    # Only calls whose outcome was not committed are sent again, and intent-before-send
    # recorded each of them as started: the report counts them as possibly paid twice.
    resent = {sha for sha, n in bodies.items() if n > 1}
    assert resent == sent_at_kill - done_at_kill
    assert resent <= started_at_kill
    assert read_summary(out)["possibly_duplicated_calls"] == len(started_at_kill)
    print(
        f"sent before kill {len(sent_at_kill)}, recorded {len(done_at_kill)}, "
        f"started {len(started_at_kill)}, re-sent {len(resent)}"
    )
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == N_PAIRS and s["pac"] == 100.0
    # Every one of the 3 calls per pair reached the server, none lost.
    assert len(bodies) == 3 * N_PAIRS


def test_resume_of_finished_run_sends_nothing(tmp_path, synthetic, sim_server):
    data = synthetic(30)
    server = sim_server(persona="flip")
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j") == 0
    sent = server.stats()["requests_total"]
    assert sent == 90 + 1  # and the judge's preflight test call
    # A finished run has nothing to send: not even a test call.
    assert run_eval(data, server.base_url, out, "--judge-model", "j", "--resume") == 0
    assert server.stats()["requests_total"] == sent
    assert read_summary(out)["n_valid"] == 30


def test_bare_resume_uses_default_run_dir(tmp_path, synthetic, sim_server, monkeypatch):
    data = synthetic(10)
    server = sim_server()
    monkeypatch.chdir(tmp_path)
    assert (
        run_cli(
            *("run", "--data", data, "--model", "m", "--base-url", server.base_url, "--quiet"),
            *("--judge-prompt", "builtin"),
        )
        == 0
    )
    assert (tmp_path / "runs" / "latest" / "summary.json").is_file()
    before = server.stats()["requests_total"]
    assert run_cli("--resume", "--quiet") == 0
    assert server.stats()["requests_total"] == before
    # The last run started here wins, wherever its --out was.
    other = tmp_path / "elsewhere"
    assert run_eval(data, server.base_url, other, model="m2") == 0
    (other / "summary.json").unlink()
    assert run_cli("--resume", "--quiet") == 0
    assert (other / "summary.json").is_file()
    assert server.stats()["requests_total"] == 2 * before


def test_resume_with_changed_request_settings_is_refused(tmp_path, synthetic, sim_server, capsys):
    data = synthetic(5)
    server = sim_server()
    out = tmp_path / "run"
    url = server.base_url
    assert run_eval(data, url, out, model="m1") == 0
    assert run_eval(data, url, out, "--resume", model="m2") == 2
    err = capsys.readouterr().err
    assert "model" in err and "m1" in err and "m2" in err
    # Settings that do not change requests may differ.
    assert run_eval(data, url, out, "--resume", "--concurrency", "3", model="m1") == 0
    assert run_cli("run", "--out", out, "--resume", "--judge-concurrency", "5", "--quiet") == 0
    with Store.open(out, create=False, lock=False) as store:
        stored = store.get_meta("config")
    assert (stored["concurrency"], stored["judge_concurrency"], stored["model"]) == (3, 5, "m1")
    # A request setting given on a bare resume is checked like any other.
    assert run_cli("run", "--out", out, "--resume", "--judge-model", "other", "--quiet") == 2
    assert "judge_model" in capsys.readouterr().err


def test_checkpoint_of_an_older_version_with_http_processes_resumes(
    tmp_path, synthetic, sim_server
):
    """Versions before issue 13 stored `http_processes` in the run config; such a run
    must still resume (the key is dropped), and report and status read it too."""
    data = synthetic(6)
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--limit", "3") == 0
    with Store.open(out, create=False, lock=False, readonly=False) as store:
        stored = store.get_meta("config")
        store.set_meta("config", {**stored, "http_processes": 2, "limit": None})
    assert run_cli("--resume", "--out", out, "--quiet") == 0
    assert read_summary(out)["n_valid"] == 6
    assert run_cli("status", out) == 0
    with Store.open(out, create=False, lock=False) as store:
        assert "http_processes" not in store.get_meta("config")


def test_new_run_into_used_directory_is_refused(tmp_path, synthetic, sim_server, capsys):
    data = synthetic(5)
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out) == 0
    assert run_eval(data, server.base_url, out) == 2
    assert "--resume" in capsys.readouterr().err


def test_second_evaluator_on_same_directory_is_locked_out(tmp_path, synthetic, sim_process):
    data = synthetic(200)
    server = sim_process("--dataset", str(data), "--latency-ms", "50")
    out = tmp_path / "run"
    caps = ("--concurrency", "2", "--judge-concurrency", "2")
    first = spawn_run(data, server.base_url, out, *caps, stderr=subprocess.DEVNULL)
    try:
        _wait_for_done(out / DB_NAME, 1, first)
        second = run_evaluator("--resume", "--out", out, timeout=60)
        assert second.returncode == 2
        assert "in use by another evaluator" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resume_completes(tmp_path, synthetic, sim_process, sig):
    data = synthetic(150)
    server = sim_process("--dataset", str(data), "--latency-ms", "30")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--concurrency", "4", "--judge-concurrency", "4")
    _wait_for_done(out / DB_NAME, 20, proc)
    proc.send_signal(sig)
    assert proc.wait(60) == 75
    partial = read_summary(out)
    assert partial["complete"] is False and partial["n_pending"] > 0
    assert "INCOMPLETE" in (out / "report.md").read_text()
    done = _shas(out / DB_NAME)
    assert run_cli("--resume", "--out", out, "--quiet") == 0
    probes = probe_shas(out)
    bodies = {k: n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes}
    # A graceful stop records every call it sent: nothing at all is sent twice (the judge's
    # preflight test call is the only body each session sends, once).
    assert all(n == 1 for n in bodies.values())
    assert all(sha in bodies for sha in done)
    assert read_summary(out)["n_valid"] == 150
