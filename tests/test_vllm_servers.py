"""Managed servers: started, health-checked, restarted and stopped for real.

No vLLM binary exists on the test machines, so the servers are the project's
simulated server, launched through the same code path as `vllm serve` (the
configurable launch command). tests/pidlog.py records the pid of every process
a server starts (plus a worker child, as vLLM has) so each test can prove that
none is left running, whatever way the evaluator ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from evaluator.config import RunConfig
from evaluator.servers import settings as stage_settings
from evaluator.store import DB_NAME
from tests.conftest import (
    ROOT,
    SUBPROCESS_ENV,
    checkpoint_calls_so_far,
    evaluator_cmd,
    read_summary,
    run_cli,
    run_evaluator,
)
from workers.server_settings import COMMAND_ENV, ServerSettings, ServerSettingsError, parse_gpus

PIDLOG = str(ROOT / "tests" / "pidlog.py")
SLEEPER = ["{python}", "-c", "import time; time.sleep(600)"]


def _sim(data: Path, *extra: str) -> list[str]:
    return [
        "{python}",
        "-m",
        "workers.simulated",
        "--port",
        "{port}",
        "--served-model-name",
        "{served_model_name}",
        "--dataset",
        str(data),
        *extra,
    ]


def _logged(pids: Path, command: list[str], child: bool = True) -> list[str]:
    """`command` run through tests/pidlog.py, which records its pids in `pids`."""
    return ["{python}", PIDLOG, str(pids), *(["--with-child"] if child else []), *command]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the text used here
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def _config(
    path: Path,
    data: Path,
    model: dict | None = None,
    judge: dict | None = None,
    model_url: str | None = None,
) -> Path:
    lines = [f"data = {_toml(str(data))}", "concurrency = 2", "judge_concurrency = 2"]
    lines.append('judge_prompt = "builtin"')
    lines += ["[model]", 'name = "m"']
    if model_url is not None:
        lines.append(f"base_url = {_toml(model_url)}")
    if model is not None:
        lines += ["[model.vllm]", *(f"{k} = {_toml(v)}" for k, v in model.items())]
    lines += ["[judge]", 'name = "m"']
    if judge is not None:
        lines += ["[judge.vllm]", *(f"{k} = {_toml(v)}" for k, v in judge.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _server_table(command: list[str], **extra) -> dict:
    return {
        "gpus": "0",
        "command": command,
        "restart_backoff_s": 0.2,
        "stop_grace_s": 10,
        "ready_timeout_s": 60,
        **extra,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead, only not yet reaped by its parent
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _assert_all_gone(pids: list[int], timeout: float = 10) -> None:
    assert pids, "no server process was recorded"
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if _alive(p)] == []


def _wait(what, timeout: float = 60, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the evaluator ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _server_pid(out: Path, name: str) -> int | None:
    try:
        return orjson.loads((out / "servers" / f"{name}.pid").read_bytes())["pid"]
    except (OSError, ValueError):
        return None


def _spawn(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        evaluator_cmd("run", "--config", cfg, "--out", out, "--quiet", *extra),
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done(out: Path) -> int:
    return len(checkpoint_calls_so_far(out / DB_NAME, "done"))


# -- settings and command lines (no processes) ---------------------------------
def test_gpu_lists_and_tensor_parallel_groups():
    assert parse_gpus("0-3,6") == ["0", "1", "2", "3", "6"]
    assert parse_gpus([0, "2-3"]) == ["0", "2", "3"]
    assert parse_gpus(5) == ["5"]
    s = ServerSettings.from_dict({"gpus": "0-7", "tensor_parallel": 2})
    assert s.groups() == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    for raw, words in (
        ({"gpus": "0-2", "tensor_parallel": 2}, "must divide"),
        ({"gpus": "3-1"}, "backwards"),
        ({"gpus": "0,0"}, "twice"),
        ({"gpus": "a"}, "not a GPU id"),
        ({"gpu": "0"}, "unknown key"),
        ({"max_num_seqs": "many"}, "max_num_seqs must be an integer"),
        ({"command": ["x", "{prot}"]}, "unknown placeholder {prot}"),
        ({"command": "vllm serve"}, "list of strings"),
    ):
        with pytest.raises(ServerSettingsError, match=words):
            ServerSettings.from_dict(raw, where="[judge.vllm]")


@pytest.mark.slow
def test_default_command_is_vllm_serve_with_this_workloads_flags(monkeypatch):
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    config = RunConfig(
        data="sample",
        model="m",
        base_url=[],
        judge_base_url=[],
        judge_model="judge-name",
        judge_vllm={"model": "org/judge-weights", "gpus": "0-3", "tensor_parallel": 2},
    )
    s = stage_settings(config, "judge")
    argv = s.argv("judge-name", 8123, 1, ["2", "3"])
    assert argv[:3] == ["vllm", "serve", "org/judge-weights"]
    flags = " ".join(argv[3:])
    for part in (
        "--port 8123",
        "--served-model-name judge-name",
        "--tensor-parallel-size 2",
        "--enable-prefix-caching",
        "--max-num-seqs 256",
        "--max-model-len 16384",
        "--structured-outputs-config.backend auto",
    ):
        assert part in flags
    # The model under test needs no schema backend, and a shorter context.
    config.vllm = {"gpus": "0"}
    model_flags = " ".join(stage_settings(config, "model").argv("m", 1, 0, ["0"]))
    assert "structured-outputs" not in model_flags and "--max-model-len 8192" in model_flags
    assert stage_settings(config, "model").argv("m", 1, 0, ["0"])[2] == "m"  # loads its name
    # A wrapper from the environment, keeping the vLLM flags where it says.
    monkeypatch.setenv(COMMAND_ENV, "apptainer exec vllm.sif vllm serve {model} {vllm_args}")
    wrapped = s.argv("judge-name", 8123, 0, ["0", "1"])
    assert wrapped[:5] == ["apptainer", "exec", "vllm.sif", "vllm", "serve"]
    assert "--enable-prefix-caching" in wrapped


@pytest.mark.slow
def test_server_flags_need_a_server_model(tmp_path, capsys):
    base = ["run", "--data", "sample", "--out", tmp_path / "x", "--quiet", "--judge-prompt", "builtin"]
    assert run_cli(*base, "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--gpus", "0") == 2
    assert "--gpus need(s) --vllm" in capsys.readouterr().err
    assert run_cli(*base, "--vllm", "m", "--gpus", "0-2", "--tensor-parallel", "2") == 2
    assert "tensor_parallel 2 must divide the 3 GPUs" in capsys.readouterr().err
    assert run_cli(*base, "--model", "m") == 2
    assert "--base-url" in capsys.readouterr().err


@pytest.mark.slow
def test_default_command_without_vllm_installed_says_so(tmp_path, monkeypatch, caplog):
    if shutil.which("vllm"):
        pytest.skip("a vllm binary is installed here")
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    out = tmp_path / "run"
    args = ("run", "--data", "sample", "--vllm", "org/model", "--out", out, "--quiet")
    assert run_cli(*args, "--judge-prompt", "builtin") == 4
    assert "cannot start model server 0" in caplog.text
    assert "(is the vllm extra installed?)" in caplog.text


# -- real processes ---------------------------------------------------------------
@pytest.mark.slow
def test_cli_flags_start_servers_per_gpu_and_stop_them(tmp_path, synthetic):
    data = synthetic(20)
    pids = tmp_path / "pids"
    command = " ".join(_logged(pids, _sim(data), child=False))
    out = tmp_path / "run"
    code = run_cli(
        "run",
        "--data",
        data,
        "--vllm",
        "org/model",
        "--gpus",
        "0-1",
        "--vllm-command",
        command,
        "--judge-model",
        "org/model",
        "--out",
        out,
        "--quiet",
        "--judge-prompt",
        "builtin",
    )
    assert code == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 20 and s["model"] == "org/model"
    endpoints = s["last_session"]["endpoints"]["generation"]
    assert len(endpoints) == 2 and all(e["ok"] > 0 for e in endpoints)  # both servers used
    assert [e["base_url"] for e in s["last_session"]["endpoints"]["judge"]] == [
        e["base_url"] for e in endpoints
    ]  # no judge servers of its own: the judge shares the model's
    for i, gpu in ((0, "0"), (1, "1")):
        text = (out / "servers" / f"model-{i}.log").read_text()
        assert f"(CUDA_VISIBLE_DEVICES={gpu})" in text and "SIMULATED" in text
    _assert_all_gone(_pids(pids))
    assert not list((out / "servers").glob("*.pid"))


@pytest.mark.slow
def test_killed_server_is_restarted_and_no_call_is_lost(tmp_path, synthetic):
    n = 150
    data = synthetic(n)
    pids = tmp_path / "pids"
    sim = _logged(pids, _sim(data, "--latency-ms", "40"))
    cfg = _config(tmp_path / "run.toml", data, model=_server_table(sim, gpus="0,1"))
    out = tmp_path / "run"
    proc = _spawn(cfg, out)
    try:
        first = _wait(lambda: _server_pid(out, "model-0"), proc=proc)
        second = _wait(lambda: _server_pid(out, "model-1"), proc=proc)
        for pid, gpu in ((first, "0"), (second, "1")):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ
        _wait(lambda: _done(out) >= 60, proc=proc)
        os.kill(first, signal.SIGKILL)
        restarted = _wait(lambda: (_server_pid(out, "model-0") or first) != first, proc=proc)
        assert restarted and _alive(_server_pid(out, "model-0"))
        assert _done(out) < 3 * n, "the run ended before the server came back"
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "restart 1 of 3" in err and "ready again after restart 1" in err
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n and s["n_failed"] == 0
    assert s["failures_by_class"] == {}
    assert (out / "servers" / "model-0.log").read_text().count("=== start ") == 2
    recorded = _pids(pids)
    assert len(recorded) == 6  # three servers (one restart), each with its worker child
    _assert_all_gone(recorded)


@pytest.mark.slow
def test_every_server_dying_past_its_restarts_stops_the_run(tmp_path, synthetic):
    data = synthetic(200)
    pids = tmp_path / "pids"
    sim = _logged(pids, _sim(data, "--latency-ms", "50"))
    cfg = _config(tmp_path / "run.toml", data, model=_server_table(sim, max_restarts=1))
    out = tmp_path / "run"
    proc = _spawn(cfg, out)
    try:
        first = _wait(lambda: _server_pid(out, "model-0"), proc=proc)
        _wait(lambda: _done(out) >= 10, proc=proc)
        os.kill(first, signal.SIGKILL)
        second = _wait(lambda: (_server_pid(out, "model-0") or first) != first, proc=proc)
        assert second
        os.kill(_server_pid(out, "model-0"), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert "used its 1 restarts" in err and "every model server died" in err
    assert not read_summary(out)["complete"]  # resumable, nothing lost
    _assert_all_gone(_pids(pids))


@pytest.mark.slow
def test_readiness_timeout_is_a_clear_error(tmp_path, synthetic):
    data = synthetic(5)
    pids = tmp_path / "pids"
    cfg = _config(
        tmp_path / "run.toml",
        data,
        model=_server_table(_logged(pids, SLEEPER), ready_timeout_s=1.5),
    )
    out = tmp_path / "run"
    result = run_evaluator("run", "--config", cfg, "--out", out, "--quiet", timeout=60)
    assert result.returncode == 4, result.stderr
    assert "model server 0 (GPUs 0, port" in result.stderr
    assert "was not ready within 1.5s (GET /health and /v1/models)" in result.stderr
    assert str(out / "servers" / "model-0.log") in result.stderr
    assert "nothing was sent" in result.stderr
    _assert_all_gone(_pids(pids))


@pytest.mark.slow
def test_server_exiting_at_start_is_reported_with_its_log(tmp_path, synthetic):
    data = synthetic(5)
    crash = ["{python}", "-c", "print('CUDA out of memory (simulated)'); raise SystemExit(3)"]
    cfg = _config(
        tmp_path / "run.toml", data, judge=_server_table(crash), model_url="http://127.0.0.1:9/v1"
    )
    result = run_evaluator("run", "--config", cfg, "--out", tmp_path / "run", timeout=60)
    assert result.returncode == 4, result.stderr
    assert (
        "judge server 0" in result.stderr and "exited with code 3 while starting" in result.stderr
    )
    assert "CUDA out of memory (simulated)" in result.stderr


@pytest.mark.slow
def test_judge_servers_failing_to_start_stop_the_model_servers(tmp_path, synthetic):
    data = synthetic(5)
    pids = tmp_path / "pids"
    cfg = _config(
        tmp_path / "run.toml",
        data,
        model=_server_table(_logged(pids, _sim(data)), gpus="0-1"),
        judge=_server_table(_logged(pids, SLEEPER), gpus="2", ready_timeout_s=3),
    )
    result = run_evaluator("run", "--config", cfg, "--out", tmp_path / "run", timeout=60)
    assert result.returncode == 4, result.stderr
    assert "judge server 0 (GPUs 2" in result.stderr
    assert len(_pids(pids)) == 6  # two model servers and a judge server, with their children
    _assert_all_gone(_pids(pids))


@pytest.mark.slow
def test_fatal_error_mid_run_stops_every_server(tmp_path, synthetic):
    data = synthetic(60)
    pids = tmp_path / "pids"
    sim = _logged(pids, _sim(data, "--fail-auth-after", "30"))
    cfg = _config(tmp_path / "run.toml", data, model=_server_table(sim))
    result = run_evaluator("run", "--config", cfg, "--out", tmp_path / "run", "--quiet", timeout=60)
    assert result.returncode == 3, result.stderr
    _assert_all_gone(_pids(pids))


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["starting", "running"])
def test_sigint_stops_every_server(tmp_path, synthetic, moment):
    data = synthetic(100)
    pids = tmp_path / "pids"
    command = SLEEPER if moment == "starting" else _sim(data, "--latency-ms", "300")
    cfg = _config(
        tmp_path / "run.toml", data, model=_server_table(_logged(pids, command), gpus="0-1")
    )
    out = tmp_path / "run"
    proc = _spawn(cfg, out)
    try:
        _wait(lambda: len(_pids(pids)) == 4, proc=proc)
        if moment == "running":
            _wait(lambda: _done(out) >= 4, proc=proc)
        else:
            time.sleep(0.5)  # well inside the readiness wait
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 75, err
    _assert_all_gone(_pids(pids))


@pytest.mark.slow
def test_servers_left_by_a_killed_evaluator_are_stopped_on_resume(tmp_path, synthetic):
    n = 40
    data = synthetic(n)
    pids = tmp_path / "pids"
    sim = _logged(pids, _sim(data, "--latency-ms", "100"), child=False)
    cfg = _config(tmp_path / "run.toml", data, model=_server_table(sim))
    out = tmp_path / "run"
    proc = _spawn(cfg, out)
    try:
        _wait(lambda: _done(out) >= 4, proc=proc)
    finally:
        proc.kill()  # SIGKILL: the evaluator can stop nothing
        proc.wait()
    orphan = _pids(pids)
    assert len(orphan) == 1 and _alive(orphan[0])  # left holding its GPU and port
    result = run_evaluator("--resume", "--out", out, "--quiet", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "left running by an earlier evaluator" in result.stderr
    assert read_summary(out)["n_valid"] == n
    _assert_all_gone(_pids(pids))
    assert len(_pids(pids)) == 2
