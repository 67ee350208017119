"""Every error class, injected over real HTTP: the right outcome recorded, the run continues or stops."""

from __future__ import annotations

import logging
import re
import subprocess
import time

import orjson
import pytest

from evaluator.store import DB_NAME, Store
from tests.conftest import (
    probe_shas,
    read_results,
    read_summary,
    run_cli,
    run_eval,
    spawn_run,
)
from workers.simulated.data import synthetic_row, write_synthetic_dataset

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

MARKED = {
    3: ("for_question", "[[sim:context_length]]"),
    5: ("against_question", "[[sim:content_filter]]"),
    7: ("for_question", "[[sim:invalid_request]]"),
    9: ("against_question", "[[sim:truncate]]"),
    11: ("issue_description", "[[sim:judge_garbage]]"),
}


def _marked_dataset(path, n=14):
    rows = []
    for i in range(1, n + 1):
        row = synthetic_row(i)
        if i in MARKED:
            col, marker = MARKED[i]
            row[col] = f"{row[col]} {marker}"
        rows.append(row)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_each_outcome_class_is_recorded_and_final_ones_are_not_resent(tmp_path, sim_server):
    data = _marked_dataset(tmp_path / "d.jsonl")
    server = sim_server()
    out = tmp_path / "run"
    # Finished with failed pairs: its own exit code (6), never 0.
    assert run_eval(data, server.base_url, out, "--judge-retries", "2") == 6
    rows = {r["id"]: r for r in read_results(out)}
    assert rows[3]["status"] == "failed" and "context_length" in rows[3]["error"]
    # The provider withholding an answer is the model refusing, not a failure
    # (tests/test_provider_refusals.py).
    assert rows[5]["status"] == "scored" and rows[5]["provider_refusals"] == {
        "against": "content_filter"
    }
    assert rows[7]["status"] == "failed" and "invalid_request" in rows[7]["error"]
    # A truncated answer is kept, flagged, and judged.
    assert rows[9]["status"] == "scored" and rows[9]["against_response"]
    # A judge that never returns a valid verdict: asked 1 + 2 times, then counted invalid.
    assert rows[11]["status"] == "invalid" and "not valid JSON" in rows[11]["verdict_error"]
    s = read_summary(out)
    assert s["n_failed"] == 2 and s["n_invalid"] == 1 and s["n_valid"] == 11
    assert s["n_truncated_answers"] == 1 and s["n_provider_refusals"] == 1
    assert s["failures_by_class"] == {"context_length": 1, "invalid_request": 1}
    counts = server.stats()["by_kind"]
    assert counts["model_context_length_exceeded"] == 1  # no retry
    assert counts["model_invalid_request_error"] == 1
    assert counts["judge_malformed"] == 3
    # The pair whose generation failed for good never reached the judge.
    sent = server.stats()["requests_total"]
    assert run_eval(data, server.base_url, out, "--resume", "--no-preflight") == 6
    assert server.stats()["requests_total"] == sent  # final outcomes are kept on resume


def test_transient_faults_are_ridden_out(tmp_path, synthetic, sim_server):
    data = synthetic(60)
    server = sim_server(
        rate_429=0.05,
        rate_5xx=0.05,
        burst=3,
        rate_reset=0.05,
        rate_stall=0.03,
        stall_s=3.0,
        retry_after_s=0.05,
        malformed_rate=0.1,
    )
    out = tmp_path / "run"
    code = run_eval(
        data, server.base_url, out, "--timeout", "1", "--max-attempts", "12", "--judge-retries", "4"
    )
    assert code == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 60 and s["n_failed"] == 0
    by_kind = server.stats()["by_kind"]
    for fault in ("429", "5xx", "reset", "stall"):
        assert sum(v for k, v in by_kind.items() if k.endswith(fault)) > 0, fault


def test_retry_budget_marks_pairs_failed_not_answered(tmp_path, synthetic, sim_server):
    data = synthetic(30)
    server = sim_server(rate_5xx=0.5)
    out = tmp_path / "run"
    # Pairs failed: the run says so with its exit code (6), not 0.
    assert run_eval(data, server.base_url, out, "--retry-budget", "5") == 6
    s = read_summary(out)
    assert s["n_failed"] > 0 and s["all_pairs_have_verdicts"] is False and s["n_valid"] + s["n_failed"] + s["n_invalid"] == 30
    failed = [r for r in read_results(out) if r["status"] == "failed"]
    assert any("retry budget" in r["error"] for r in failed)
    assert all(
        r["for_response"] is None or r["against_response"] is None or "judge" in r["error"]
        for r in failed
    )


def test_quota_exhausted_stops_the_run_cleanly(tmp_path, synthetic, sim_server):
    data = synthetic(40)
    server = sim_server(quota_after=30)
    out = tmp_path / "run"
    caps = ("--concurrency", "4", "--judge-concurrency", "4")
    assert run_eval(data, server.base_url, out, *caps) == 3
    assert read_summary(out)["complete"] is False
    healthy = sim_server()
    assert run_eval(data, healthy.base_url, out, "--resume", *caps) == 0
    assert read_summary(out)["n_valid"] == 40


def test_config_file_sets_the_run_and_flags_override_it(tmp_path, synthetic, sim_server):
    server = sim_server()
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'data = "{synthetic(8)}"\nmodel = "m"\nbase_url = "{server.base_url}"\n'
        'judge_model = "j"\nconcurrency = 2\nlimit = 5\njudge_prompt = "builtin"\n'
    )
    out = tmp_path / "run"
    assert run_cli("run", "--config", cfg, "--limit", "6", "--out", out, "--quiet") == 0
    assert read_summary(out)["n_pairs"] == 6
    with Store.open(out, create=False, lock=False) as store:
        stored = store.get_meta("config")
    assert stored["concurrency"] == 2 and stored["judge_model"] == "j"


def test_config_file_model_and_judge_tables(tmp_path, synthetic, sim_server):
    server = sim_server()
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'data = "{synthetic(4)}"\n[model]\nname = "m"\nbase_url = "{server.base_url}"\n'
        'concurrency = 3\n[judge]\nname = "j"\nconcurrency = 5\nprompt = "builtin"\n'
    )
    out = tmp_path / "run"
    assert run_cli("run", "--config", cfg, "--out", out, "--quiet") == 0
    with Store.open(out, create=False, lock=False) as store:
        stored = store.get_meta("config")
    assert (stored["model"], stored["judge_model"]) == ("m", "j")
    assert (stored["concurrency"], stored["judge_concurrency"]) == (3, 5)
    assert stored["judge_prompt_source"] == "builtin"


@pytest.mark.parametrize(
    "text, message",
    [
        ('model = "m"\nmodle = "x"\n', "unknown key(s) modle"),
        ('judge_model = "a"\n[judge]\nname = "b"\n', "[judge] name repeats"),
        ('[judge]\ncolour = "b"\n', "unknown key(s) judge_colour"),
        ('model = "m"\nconcurrency = "many"\n', "concurrency must be int"),
        ('model = "m\n', "not valid TOML"),
    ],
)
def test_bad_config_file_is_named(tmp_path, capsys, text, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    assert run_cli("run", "--config", cfg, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and "Traceback" not in err


def test_reuse_judges_old_generations_with_a_new_judge(tmp_path, synthetic, sim_server):
    data = synthetic(20)
    server = sim_server()
    first = tmp_path / "first"
    assert run_eval(data, server.base_url, first, "--judge-model", "judge-a") == 0
    before = server.stats()["by_kind"]
    second = tmp_path / "second"
    assert (
        run_eval(data, server.base_url, second, "--judge-model", "judge-b", "--reuse", first) == 0
    )
    after = server.stats()["by_kind"]
    assert after["model"] == before["model"]  # zero generation calls
    assert after["judge"] == before["judge"] + 20 + 1  # and the new judge's preflight call
    s = read_summary(second)
    assert s["n_valid"] == 20 and s["judge_model"] == "judge-b"


def test_server_killed_and_restarted_mid_run(tmp_path, synthetic, sim_process):
    data = synthetic(150)
    server = sim_process("--dataset", str(data), "--latency-ms", "10")
    port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--concurrency", "4", "--judge-concurrency", "4")
    try:
        deadline = time.monotonic() + 30
        while not (out / DB_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        server.proc.kill()
        server.proc.wait(10)
        time.sleep(1.0)  # the evaluator sees refused connections meanwhile
        sim_process("--dataset", str(data), "--latency-ms", "10", port=int(port))
        assert proc.wait(120) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 150 and s["n_failed"] == 0


def _outcomes(db) -> dict[str, str]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(
            conn.execute("SELECT key, content FROM calls WHERE status IN ('done', 'failed')")
        )
    finally:
        conn.close()


def test_full_disk_stops_with_an_intact_store(tmp_path, synthetic, sim_server, caplog):
    """A disk that fills mid-run: exit 5 with an intact checkpoint, and "N calls sent" counts
    only calls whose intent was committed. On the still-full disk, --resume and a fresh run
    exit 5 with one line each, changing nothing. With space again, the resume finishes and
    re-sends exactly the calls it counts as possibly paid twice."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    caplog.set_level(logging.INFO, logger="evaluator")
    try:
        # ~1,500 pairs of records (and the pairs' rows) outgrow the 600 kB disk long before
        # the run ends.
        data = write_synthetic_dataset(tmp_path / "d.jsonl", 1500, section_chars=10)
        server = sim_server()
        out = mnt / "run"
        code = run_eval(data, server.base_url, out)
        assert code == 5
        assert "cannot write the checkpoint" in caplog.text and "full" in caplog.text
        import sqlite3

        conn = sqlite3.connect(out / DB_NAME)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'done'").fetchone()[0]
        recorded = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        started = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'started'").fetchone()[0]
        conn.close()
        assert done > 0
        # Every call counted as sent has its intent in the checkpoint, and reached the server.
        sent = int(re.search(r"this session: (\d+) calls sent", caplog.text)[1])
        probes = probe_shas(out)
        received = sum(
            n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes
        )
        assert sent == recorded == received

        # The disk is still full: one clear line, exit 5, every outcome kept.
        before = _outcomes(out / DB_NAME)
        fresh = ("run", "--data", data, "--model", "m", "--base-url", server.base_url)
        fresh += ("--out", mnt / "fresh", "--quiet", "--judge-prompt", "builtin")
        for args in (("--resume", "--out", out, "--quiet"), fresh):
            caplog.clear()
            assert run_cli(*args) == 5, args
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "--resume" in errors[0].getMessage(), caplog.text
            assert "Traceback" not in caplog.text
        assert _outcomes(out / DB_NAME) == before

        # Space again: the resume finishes, re-sending exactly what it counts.
        assert subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)]).returncode == 0
        assert run_cli("--resume", "--out", out, "--quiet") == 0
        s = read_summary(out)
        assert s["complete"] and s["n_valid"] + s["n_invalid"] == 1500
        assert s["possibly_duplicated_calls"] == started
        bodies = {k: n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes}
        assert len(bodies) == 3 * 1500
        assert sum(n - 1 for n in bodies.values()) == started
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
