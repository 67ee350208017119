"""Every documented exit code, each from a real run of `python -m evaluator` against the
simulated (or hostile) server on loopback: the code, one line that says what happened and
what to do, and no traceback.

Exit 1 (internal error) is not walked: it is what a bug ends in, and this project has no
known bug to trigger it with; faking one would only test the `except Exception` in main().
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import orjson
import pytest

from evaluator.store import DB_NAME
from tests.conftest import (
    SUBPROCESS_ENV,
    TEST_MODELS,
    checkpoint_calls_so_far,
    evaluator_cmd,
    run_args,
    spawn_run,
)
from workers.simulated import SimConfig
from workers.simulated.data import synthetic_row, write_synthetic_dataset
from workers.simulated.hostile import Hostile, ThreadedHostileServer
from workers.simulated.wire import MODEL_ERROR_MARKERS

# End to end: every exit code, from a real run of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

CONTEXT_MARK = next(m for m in MODEL_ERROR_MARKERS if "context" in m)


def _run(*args, timeout: float = 300, **popen) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        evaluator_cmd(*args),
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def _says_once(proc: subprocess.CompletedProcess[str] | tuple[int, str], code: int, text: str):
    rc, stderr = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert rc == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if text in line]
    assert len(lines) == 1, stderr
    return lines[0]


def _marked(path, n: int, marked: set[int], sides: tuple[str, ...] = ("for",)):
    """n pairs; in those of `marked`, the questions of `sides` are too long for the model."""
    with path.open("wb") as fh:
        for i in range(1, n + 1):
            row = synthetic_row(i, section_chars=60)
            for side in sides if i in marked else ():
                row[f"{side}_question"] += " " + CONTEXT_MARK
            fh.write(orjson.dumps(row) + b"\n")
    return path


@pytest.fixture
def data(tmp_path):
    return write_synthetic_dataset(tmp_path / "d.jsonl", 8, section_chars=60)


def test_0_finished(tmp_path, sim_server, data):
    proc = _run(*run_args(data, sim_server().base_url, tmp_path / "run"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert " ERROR " not in proc.stderr
    assert "PAC" in proc.stdout


def test_2_user_error(tmp_path, sim_server, data):
    proc = _run(*run_args(data, sim_server().base_url, tmp_path / "run", "--rpm", "nan"))
    line = _says_once(proc, 2, "--rpm must be above 0")
    assert line.startswith("error:") and proc.stderr.count("\n") == 1


def test_3_refused_for_good(tmp_path, sim_server, data):
    server = sim_server(quota_after=6)  # the quota runs out mid-run
    proc = _run(*run_args(data, server.base_url, tmp_path / "run", "--concurrency", "1"))
    line = _says_once(proc, 3, "stopping:")
    assert "quota" in line and "--resume" in line


def test_4_preflight_failed(tmp_path, data):
    proc = _run(*run_args(data, "http://127.0.0.1:9/v1", tmp_path / "run"))
    line = _says_once(proc, 4, "preflight:")
    assert "unreachable" in line


def test_5_checkpoint_not_written(tmp_path, sim_server):
    """A file size limit (RLIMIT_FSIZE, as a quota would) makes the checkpoint's writes fail
    mid-run, as a full disk does, without root."""
    data = write_synthetic_dataset(tmp_path / "big.jsonl", 600, section_chars=10)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    proc = _run(*run_args(data, sim_server().base_url, tmp_path / "run"), preexec_fn=small_files)
    line = _says_once(proc, 5, "cannot write the checkpoint")
    assert "--resume" in line


def test_6_finished_with_failed_pairs(tmp_path, sim_server):
    data = _marked(tmp_path / "d.jsonl", 8, {2, 5})
    proc = _run(*run_args(data, sim_server().base_url, tmp_path / "run"))
    line = _says_once(proc, 6, "finished, but")
    assert "2 pair(s) failed" in line and "--retry-failed" in line


def test_7_circuit_breaker(tmp_path, sim_server):
    data = _marked(tmp_path / "d.jsonl", 30, set(range(1, 31)), ("for", "against"))
    server = sim_server()
    args = run_args(data, server.base_url, tmp_path / "run", "--max-failures", "3")
    line = _says_once(_run(*args, "--concurrency", "1"), 7, "stopped early:")
    assert "--retry-failed" in line


def test_8_calibration_out_of_tolerance(tmp_path, sim_server):
    from tests.test_calibrate import _sets

    folder = _sets(tmp_path)
    server = sim_server(judge_persona="lenient")
    proc = _run(
        "calibrate",
        *("--judge-model", "simulated-judge", "--judge-base-url", server.base_url),
        *("--data-dir", folder, "--out", tmp_path / "cal", "--quiet", "--judge-prompt", "builtin"),
    )
    assert proc.returncode == 8, proc.stderr
    assert "Traceback" not in proc.stderr and " ERROR " not in proc.stderr
    assert proc.stdout.count("| FAIL |") == 2


def test_9_asked_to_wait_too_long(tmp_path, data):
    with ThreadedHostileServer(
        SimConfig(served_names=TEST_MODELS), Hostile(retry_after="inf", retry_after_from=4)
    ) as server:
        proc = _run(*run_args(data, server.base_url, tmp_path / "run"))
    line = _says_once(proc, 9, "stopping:")
    assert "asked to wait without end" in line and "--resume" in line


def test_75_interrupted(tmp_path, sim_process, data):
    server = sim_process("--latency-ms", "300")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--concurrency", "2")
    deadline = time.monotonic() + 60
    while not checkpoint_calls_so_far(out / DB_NAME, "done"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1].decode()
    line = _says_once((proc.returncode, stderr), 75, "interrupted: resume with")
    assert "--resume" in line


def test_76_budget(tmp_path, sim_server, data):
    prices = ("--price-in", "100", "--price-out", "100")
    judge = ("--judge-price-in", "100", "--judge-price-out", "100")
    proc = _run(
        *run_args(data, sim_server().base_url, tmp_path / "run", *prices, *judge),
        *("--max-cost", "0.5", "--concurrency", "1"),
    )
    line = _says_once(proc, 76, "stopped before exceeding --max-cost")
    assert "--max-cost" in line


def test_the_table_in_help_lists_every_code_walked_here():
    proc = subprocess.run(
        [sys.executable, "-m", "evaluator", "--help"],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    table = proc.stdout[proc.stdout.index("exit codes:") :]
    codes = {int(line.split()[0]) for line in table.splitlines()[1:] if line[:4].strip().isdigit()}
    walked = {int(name.split("_")[1]) for name in globals() if name[:5] == "test_" and name[5].isdigit()}
    assert codes - {1} == walked, (codes, walked)
