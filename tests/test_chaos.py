"""Chaos: kill -9 the evaluator at random moments, resume each time, and compare with a clean run.

The simulated backend answers each request deterministically, so an interrupted
run that loses nothing must end with exactly the clean run's results.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import orjson
import pytest

from evaluator.store import DB_NAME
from tests.conftest import (
    checkpoint_calls_so_far,
    probe_shas,
    read_summary,
    run_args,
    run_evaluator,
    spawn_run,
)
from workers.pool import SLOW_START

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

CONCURRENCY = 16  # per stage: at most 2 x 16 calls in flight


def _rows(out) -> list[dict]:
    rows = [orjson.loads(x) for x in (out / "results.jsonl").read_bytes().splitlines()]
    return sorted(rows, key=lambda r: r["id"])


def _started_keys(db) -> frozenset[str]:
    return frozenset(checkpoint_calls_so_far(db, "started"))


def _done(db) -> int:
    return len(checkpoint_calls_so_far(db, "done"))


def _started(db) -> int:
    return len(_started_keys(db))


def _wait_for_started(db, n: int, timeout: float = 30) -> None:
    """Until n calls are started, or the timeout passes: the test then checks what it needs."""
    deadline = time.monotonic() + timeout
    while _started(db) < n and time.monotonic() < deadline:
        time.sleep(0.05)


RUN_FLAGS = ("--judge-model", "j", "--concurrency", CONCURRENCY, "--judge-concurrency", CONCURRENCY)


def chaos(tmp_path, synthetic, sim_process, n_pairs: int, kills: int, seed: int) -> dict:
    data = synthetic(n_pairs)
    sim_args = ("--dataset", str(data), "--persona", "mixture", "--latency-ms", "2")
    clean_server = sim_process(*sim_args)
    clean = tmp_path / "clean"
    clean_run = run_evaluator(
        *run_args(data, clean_server.base_url, clean, *RUN_FLAGS), timeout=300
    )
    assert clean_run.returncode == 0, clean_run.stderr

    server = sim_process(*sim_args)
    out = tmp_path / "chaos"
    rng = random.Random(seed)
    started_at_kills = []
    resume = ()
    for _ in range(kills):
        proc = spawn_run(data, server.base_url, out, *RUN_FLAGS, *resume, stderr=subprocess.DEVNULL)
        # Kill mid-run: once this process has recorded new answers, after a random delay.
        before = _done(out / DB_NAME)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _done(out / DB_NAME) <= before:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        started = _started_keys(out / DB_NAME)
        # A resume killed during start-up, before it settled the previous kill's
        # calls, leaves the very same set: those calls are not new.
        if started_at_kills and started == started_at_kills[-1]:
            started = frozenset()
        started_at_kills.append(started)
        resume = ("--resume",)  # as a requeued job would
    final = run_evaluator(*run_args(data, server.base_url, out, *RUN_FLAGS, *resume), timeout=300)
    assert final.returncode == 0, final.stderr

    # Nothing lost, nothing different: the interrupted run ends as the clean one.
    assert _rows(out) == _rows(clean)
    s, c = read_summary(out), read_summary(clean)
    for key in ("n_valid", "n_invalid", "pac", "ref", "ninf", "by_category", "by_issue_scale"):
        assert s[key] == c[key], key
    assert s["n_valid"] == n_pairs

    # Re-sent calls: never more than were in flight at the kills, and all reported. (The
    # judge's preflight test call, sent once per session, is no call of the run.)
    probes = probe_shas(out)
    bodies = {k: n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes}
    resent = sum(n - 1 for n in bodies.values())
    reported = s["possibly_duplicated_calls"]
    sizes = [len(k) for k in started_at_kills]
    assert all(n <= 2 * CONCURRENCY for n in sizes), sizes
    assert reported == sum(sizes)
    assert resent <= reported
    assert len(bodies) == 3 * n_pairs
    return {
        "kills": kills,
        "started_at_kills": sizes,
        "resent": resent,
        "reported": reported,
    }


def test_five_random_kills_then_resume_equal_a_clean_run(tmp_path, synthetic, sim_process):
    result = chaos(tmp_path, synthetic, sim_process, n_pairs=1000, kills=5, seed=2026)
    print(result)
    assert result["reported"] > 0  # the kills really landed mid-run


@pytest.mark.soak
def test_soak_many_kills(tmp_path, synthetic, sim_process):
    """Longer variant: `python -m pytest -m soak -s tests/test_chaos.py` (see benchmarks/README.md)."""
    result = chaos(tmp_path, synthetic, sim_process, n_pairs=5000, kills=25, seed=7)
    print(result)


def test_sigterm_exits_within_the_drain_timeout(tmp_path, synthetic, sim_process):
    data = synthetic(100)
    server = sim_process("--dataset", str(data), "--latency-ms", "10000", "--latency-sigma", "0.01")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, *RUN_FLAGS, "--drain-timeout", "1")
    # Unknown limits: slow start sends a first wave of 8, and no more until answers come back.
    _wait_for_started(out / DB_NAME, SLOW_START)
    in_flight = _started(out / DB_NAME)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 75
    # The 1 s drain ended the run, not the 10 s calls: none of them was answered (had the
    # run waited for them, they would be "done"), however long the exit itself took.
    assert _done(out / DB_NAME) == 0
    # The calls cut off by the deadline stay "started", counted on resume; nothing new started.
    assert _started(out / DB_NAME) == in_flight == SLOW_START
    summary = read_summary(out)
    assert summary["complete"] is False


def test_second_signal_stops_at_once_with_a_consistent_store(tmp_path, synthetic, sim_process):
    data = synthetic(100)
    server = sim_process("--dataset", str(data), "--latency-ms", "20000", "--latency-sigma", "0.01")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, *RUN_FLAGS, "--drain-timeout", "60")
    _wait_for_started(out / DB_NAME, SLOW_START)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 75
    # Not the 60 s drain, nor the 20 s calls: a run that had waited for them (within the
    # drain) would have recorded their answers; the second signal cut them off unanswered.
    assert _done(out / DB_NAME) == 0
    conn = sqlite3.connect(out / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert _started(out / DB_NAME) == SLOW_START


# -- the filesystem fails under the run (an I/O error on files already open) ------------------
def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def loop_ext4(tmp_path, size_mb: int = 64):
    """A small ext4 filesystem on a loop device, mounted at tmp_path/"fs"; yields
    (mount point, remount) where remount() unmounts and mounts it again from its image
    (what a reboot would find). Skips where root, losetup or mkfs.ext4 are missing."""
    missing = [t for t in ("losetup", "mkfs.ext4", "mount", "umount") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the e2fsprogs and util-linux packages)")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    made = _sh("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed here: {made.stderr.strip()}")
    attached = _sh("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        mounted = _sh("mount", "-t", "ext4", device, str(mnt))
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount ext4 on a loop device here: {mounted.stderr.strip()}")

        def remount() -> None:
            assert _sh("umount", str(mnt)).returncode == 0
            again = _sh("mount", "-t", "ext4", device, str(mnt))
            assert again.returncode == 0, again.stderr

        yield mnt, remount
    finally:
        _sh("umount", "-l", str(mnt))
        _sh("losetup", "-d", device)


COMMITTED = re.compile(
    r"(\d+) call outcomes? committed in this session, through commit #(\d+)"
    r"(?:; commit #\d+ \((\d+) outcomes, (\d+) intents\) failed while being made durable)?"
)


def test_filesystem_aborted_mid_run_keeps_exactly_what_was_committed(
    tmp_path, synthetic, sim_process
):
    """ext4 `remount,abort` mid-run: every write after it fails (EROFS), and whatever was
    not on the disk yet is gone after the remount. The run stops with exit 5; the checkpoint
    then holds exactly the outcomes it reported committed, and the resume re-sends exactly
    the calls it counts as possibly paid twice. (The one commit whose fsync failed is
    reported in doubt: its calls were never sent; if it reached the disk anyway, its intents
    count as possibly paid twice although they were sent once.)"""
    n_pairs = 400
    data = synthetic(n_pairs)
    server = sim_process("--dataset", str(data), "--persona", "mixture", "--latency-ms", "30")
    with loop_ext4(tmp_path) as (mnt, remount):
        out = mnt / "run"
        proc = spawn_run(data, server.base_url, out, *RUN_FLAGS)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _done(out / DB_NAME) < 300:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert _sh("mount", "-o", "remount,abort", str(mnt)).returncode == 0
        code = proc.wait(60)
        stderr = proc.stderr.read().decode()
        assert code == 5, stderr
        assert "Traceback" not in stderr and "--resume" in stderr
        reported = COMMITTED.search(stderr)
        assert reported is not None, stderr
        outcomes, commits = int(reported[1]), int(reported[2])
        doubt_outcomes, doubt_intents = int(reported[3] or 0), int(reported[4] or 0)
        remount()  # what is on the disk now, not in the page cache
        conn = sqlite3.connect(out / DB_NAME)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        on_disk = conn.execute(
            "SELECT COUNT(*) FROM calls WHERE status IN ('done', 'failed')"
        ).fetchone()[0]
        started = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'started'").fetchone()[0]
        disk_commits = orjson.loads(
            conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0]
        )
        conn.close()
        # Exactly the commits reported, plus the one in doubt only if it was reported so.
        landed = disk_commits == commits + 1
        assert disk_commits == commits or (landed and reported[3] is not None)
        assert on_disk == outcomes + (doubt_outcomes if landed else 0) > 0
        final = run_evaluator(
            *run_args(data, server.base_url, out, *RUN_FLAGS, "--resume"), timeout=300
        )
        assert final.returncode == 0, final.stderr
        s = read_summary(out)
        probes = probe_shas(out)
    assert s["n_valid"] == n_pairs and s["complete"]
    assert s["possibly_duplicated_calls"] == started
    bodies = {k: n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes}
    assert len(bodies) == 3 * n_pairs
    resent = sum(n - 1 for n in bodies.values())
    assert resent == started - (doubt_intents if landed else 0)
