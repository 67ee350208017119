"""The report's side process (results.parquet and plots): same outputs with or without it."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import read_results, run_cli, run_eval, spawn_run

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

PLOTS = ("score_distribution.png", "pac_by_issue_scale.png", "metrics_by_category.png")


def _outputs(out):
    table = pq.read_table(out / "results.parquet").to_pylist()
    pngs = {name: (out / "plots" / name).stat().st_size for name in PLOTS}
    return table, pngs


def test_side_process_and_fallback_write_the_same_outputs(
    tmp_path, synthetic, sim_server, monkeypatch, caplog
):
    data = synthetic(30)
    server = sim_server(persona="mixture", share=0.5)
    out = tmp_path / "run"
    caplog.set_level(logging.WARNING)
    assert run_eval(data, server.base_url, out) == 0
    # A run this short ends before the niced child opens results.jsonl.tmp: it must read
    # the renamed file instead of failing over to the parent.
    assert "side process failed" not in caplog.text
    with_child, pngs = _outputs(out)
    assert [r["id"] for r in with_child] == [r["id"] for r in read_results(out)]
    assert all(size > 1000 for size in pngs.values())

    # No side process (it cannot start): the parent writes the same files itself.
    for name in PLOTS:
        (out / "plots" / name).unlink()
    (out / "results.parquet").unlink()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    assert run_cli("report", out) == 0
    assert "side process failed" in caplog.text
    fallback, pngs_again = _outputs(out)
    assert fallback == with_child
    assert set(pngs_again) == set(pngs)
    assert not list(out.glob("*.tmp"))


def _side_processes(out) -> list[int]:
    """Pids of report side processes working for the run in `out` (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"evaluator.report.child_process" in cmd and str(out).encode() in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the processes")
def test_side_process_starts_with_the_run_and_ends_with_it_when_killed(
    tmp_path, synthetic, sim_process
):
    data = synthetic(200)
    server = sim_process("--latency-ms", "50")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--concurrency", "4", "--judge-concurrency", "4")
    deadline = time.monotonic() + 30
    while not _side_processes(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _side_processes(out), "the side process should start with the session"
    proc.kill()  # SIGKILL: the parent cannot stop it; it must notice and leave by itself
    proc.wait()
    deadline = time.monotonic() + 30
    while _side_processes(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _side_processes(out) == []
    assert not (out / "results.parquet").exists()
    # The run resumes to the end and the side process writes its outputs then.
    assert run_eval(data, server.base_url, out, "--resume") == 0
    assert pq.read_table(out / "results.parquet").num_rows == 200
    assert _side_processes(out) == []
