"""The `run` command against real loopback servers: keys, fatal errors, unreachable endpoints."""

from __future__ import annotations

import logging

import pytest

from evaluator.store import DB_NAME, Store
from tests.conftest import read_summary, run_args, run_cli, run_eval, spawn_run

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

KEY = "sk-sim-SECRET-0123456789abcdef"


def _all_text(out) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()
    )


def test_key_from_environment_is_used_and_never_written(
    tmp_path, synthetic, sim_server, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    data = synthetic(12)
    server = sim_server(api_key=KEY)
    monkeypatch.setenv("SIM_KEY", KEY)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--api-key-env", "SIM_KEY") == 0
    assert read_summary(out)["n_valid"] == 12
    assert KEY not in _all_text(out)
    assert KEY not in caplog.text
    with Store.open(out, create=False, lock=False) as store:
        assert store.get_meta("config")["api_key_env"] == "SIM_KEY"


def test_key_from_dotenv(tmp_path, synthetic, sim_server, monkeypatch):
    data = synthetic(5)
    server = sim_server(api_key=KEY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIM_KEY", raising=False)
    (tmp_path / ".env").write_text(f'# keys\nexport SIM_KEY="{KEY}"\n')
    assert (
        run_cli(
            "run",
            "--data",
            data,
            "--model",
            "m",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "SIM_KEY",
            "--quiet",
            "--judge-prompt",
            "builtin",
        )
        == 0
    )
    assert KEY not in _all_text(tmp_path / "runs")


def test_missing_key_variable_is_named(tmp_path, synthetic, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code = run_eval(
        synthetic(3), "http://127.0.0.1:9/v1", tmp_path / "o", "--api-key-env", "NO_SUCH_KEY_VAR"
    )
    assert code == 2 and "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_wrong_key_stops_before_any_call(tmp_path, synthetic, sim_server, monkeypatch):
    server = sim_server(api_key=KEY)
    monkeypatch.setenv("SIM_KEY", "sk-wrong-000000000000")
    code = run_eval(synthetic(5), server.base_url, tmp_path / "o", "--api-key-env", "SIM_KEY")
    assert code == 3
    assert server.stats()["requests_total"] == 1  # only the start-up check, answered 401


def test_unreachable_endpoint_exits_4_and_sends_nothing(tmp_path, synthetic, sim_server, caplog):
    server = sim_server()
    out = tmp_path / "o"
    code = run_eval(synthetic(5), server.base_url, out, "--judge-base-url", "http://127.0.0.1:9/v1")
    assert code == 4
    assert "judge endpoint" in caplog.text and "unreachable" in caplog.text
    assert server.stats()["requests_total"] == 0
    with Store.open(out, create=False, lock=False) as store:
        assert store.counts() == {}


def test_key_revoked_mid_run_stops_cleanly_and_resumes(tmp_path, synthetic, sim_server):
    data = synthetic(60)
    first = sim_server(fail_auth_after=40)
    out = tmp_path / "run"
    flags = ("--judge-model", "j", "--concurrency", "4", "--judge-concurrency", "4")
    assert run_eval(data, first.base_url, out, *flags) == 3
    s = read_summary(out)
    assert s["complete"] is False and s["n_failed"] == 0  # an auth stop is not a pair failure
    with Store.open(out, create=False, lock=False) as store:
        recorded = sum(n for k, n in store.counts().items() if k.endswith(":done"))
        started = sum(n for k, n in store.counts().items() if k.endswith(":started"))
    assert 0 < recorded <= 40
    assert started <= 8  # the calls in flight when the key was refused
    second = sim_server()  # "the key was fixed": a healthy endpoint, same model
    assert run_eval(data, second.base_url, out, *flags, "--resume") == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 60
    # What was not recorded, and the judge's preflight test call.
    assert second.stats()["requests_total"] == 180 - recorded + 1
    assert s["possibly_duplicated_calls"] == started


def test_run_dir_with_a_broken_store_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    assert run_cli("--resume", "--out", out) == 2
    err = capsys.readouterr().err
    assert "not a usable checkpoint" in err and "Traceback" not in err


def test_rpm_cap_spreads_requests(tmp_path, synthetic, sim_server):
    import time

    server = sim_server()
    start = time.monotonic()
    # 30 pairs = 60 generation calls at 1,200/min (20/s, bucket of 20): at least 2 s.
    flags = ("--judge-base-url", server.base_url, "--rpm", "1200")
    assert run_eval(synthetic(30), server.base_url, tmp_path / "o", *flags) == 0
    assert time.monotonic() - start >= 1.9
    assert read_summary(tmp_path / "o")["n_valid"] == 30


def test_bad_inputs_leave_a_finished_run_untouched(tmp_path, synthetic, sim_server, capsys):
    import sqlite3

    data = synthetic(10)
    server = sim_server()
    out = tmp_path / "run"
    base = run_args(data, server.base_url, out)
    assert run_cli(*base) == 0
    before = (out / "results.jsonl").read_bytes()
    not_data = tmp_path / "notes.csv"
    not_data.write_text("a,b\n1,2\n")
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("colour = 'blue'\n")
    attempts = [
        (
            (
                "run",
                "--data",
                not_data,
                "--model",
                "m",
                "--base-url",
                server.base_url,
                "--out",
                out,
                "--resume",
                "--judge-prompt",
                "builtin",
            ),
            "data",
        ),
        (("run", "--config", bad_cfg, "--out", out, "--resume"), "colour"),
        ((*base, "--resume", "--judge-order", "sideways"), "invalid choice"),
        ((*base,), "already holds a run"),
        (
            (
                "run",
                "--data",
                data,
                "--model",
                "m",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--out",
                out,
                "--resume",
                "--judge-prompt",
                "builtin",
            ),
            "",
        ),
    ]
    for args, expected in attempts:
        try:
            code = run_cli(*args)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        captured = capsys.readouterr()
        assert code != 0, args
        assert expected in captured.err, (args, captured.err)
        assert "Traceback" not in captured.err
    conn = sqlite3.connect(out / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert (out / "results.jsonl").read_bytes() == before
    assert run_cli("report", out) == 0


def test_progress_lines_and_cost_estimate(tmp_path, synthetic, sim_server, caplog):
    caplog.set_level(logging.INFO)
    server = sim_server(latency_median_ms=20)
    out = tmp_path / "run"
    assert (
        run_cli(
            "run",
            "--data",
            synthetic(60),
            "--model",
            "m",
            "--base-url",
            server.base_url,
            "--out",
            out,
            "--judge-prompt",
            "builtin",
            "--progress",
            "log",
            "--progress-interval",
            "0.2",
            "--concurrency",
            "4",
            "--judge-concurrency",
            "4",
            "--price-in",
            "2",
            "--price-out",
            "8",
            "--judge-price-in",
            "1",
            "--judge-price-out",
            "1",
        )
        == 0
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines and "/60 pairs" in lines[-1] and "ETA" in lines[-1] and "calls/s" in lines[-1]
    session = read_summary(out)["last_session"]
    assert session["estimated_cost_usd"] > 0
    assert session["tokens_in"] > 0 and session["tokens_out"] > 0


def test_status_while_running_and_after(tmp_path, synthetic, sim_process, capsys):
    import subprocess
    import time

    data = synthetic(200)
    server = sim_process("--dataset", str(data), "--latency-ms", "50")
    out = tmp_path / "run"
    caps = ("--concurrency", "4", "--judge-concurrency", "4")
    proc = spawn_run(data, server.base_url, out, *caps, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            if (out / DB_NAME).exists() and run_cli("status", out) == 0:
                text = capsys.readouterr().out
                if "generation: 0 answered" not in text:
                    break
            time.sleep(0.2)
        assert f"running (pid {proc.pid})" in text and "/200" in text
    finally:
        proc.wait(120)
    assert run_cli("status", out) == 0
    text = capsys.readouterr().out
    assert "not running" in text and "pairs judged 200/200" in text
    assert "generation: 400 answered, 0 failed, 0 in flight" in text
