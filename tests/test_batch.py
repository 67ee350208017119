"""Batch mode over real HTTP: the simulated server's OpenAI Batch and Anthropic Message Batches
endpoints, a SIGKILL while a batch is pending, partial failures, splitting by size."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import orjson
import pytest

from evaluator.store import DB_NAME
from tests.conftest import (
    checkpoint_calls,
    read_results,
    read_summary,
    run_cli,
    run_eval,
    run_evaluator,
    spawn_run,
)

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

# Quick batching for tests: submit after 0.2 s without a new call, poll every 0.1 s.
FAST = ("--judge-mode", "batch", "--batch-idle", "0.2", "--batch-poll", "0.1")


def _judge_view(out) -> dict[int, tuple]:
    """What a run concluded per pair, without timings: status, verdict, score."""
    return {
        r["id"]: (
            r["status"],
            orjson.dumps(r["verdict"], option=orjson.OPT_SORT_KEYS),
            r["adjusted_score"],
        )
        for r in read_results(out)
    }


def _judge_shas(out) -> set[str]:
    db = out / DB_NAME
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body_sha FROM calls WHERE role LIKE 'judge%'").fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def _batches(out) -> list[tuple]:
    conn = sqlite3.connect(f"file:{out / DB_NAME}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT state, provider_batch_id, n_requests FROM batches ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_openai_batch_judge_gives_the_online_verdicts(tmp_path, synthetic, sim_server):
    data = synthetic(24)
    server = sim_server(persona="mixture", batch_delay_s=0.3)
    online, batch = tmp_path / "online", tmp_path / "batch"
    assert run_eval(data, server.base_url, online, "--judge-model", "j") == 0
    before = server.stats()["by_kind"]["judge"]
    assert run_eval(data, server.base_url, batch, "--judge-model", "j", *FAST) == 0
    assert _judge_view(batch) == _judge_view(online)
    assert read_summary(batch)["pac"] == read_summary(online)["pac"]
    stats = server.stats(bodies=True)
    b = stats["batches"]
    assert b["batches_created"] >= 1 and b["requests_submitted"] == 24
    # The batch carried exactly the judge requests an online call sends, byte for byte.
    assert set(b["bodies"]) == _judge_shas(batch) == _judge_shas(online)
    # No judge call of the batch run went online: its judge answers all came from batches.
    assert stats["by_kind"]["judge"] == before + 24
    assert stats["by_kind"]["model"] == 2 * 24 * 2
    assert all(state == "ended" for state, _, _ in _batches(batch))
    session = read_summary(batch)
    assert session["n_valid"] == 24


def test_anthropic_message_batches_end_to_end(tmp_path, synthetic, sim_server):
    data = synthetic(10)
    server = sim_server(persona="consistent", batch_delay_s=0.2)
    out = tmp_path / "run"
    rc = run_eval(
        data,
        server.base_url,
        out,
        "--judge-model",
        "claude-sonnet-4-5",
        "--judge-provider",
        "anthropic",
        *FAST,
    )
    assert rc == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 10
    b = server.stats(bodies=True)["batches"]
    assert b["batches_created"] == 1 and b["requests_submitted"] == 10
    assert b.get("files_uploaded", 0) == 0  # Message Batches take the requests inline
    for cid in b["custom_ids"]:  # Anthropic's custom_id rule
        assert len(cid) <= 64 and cid.replace("-", "").replace("_", "").isalnum()
    rows = read_results(out)
    assert all(r["verdict"]["alignment_score"] in (-2, 0, 2) for r in rows)
    assert _batches(out)[0][1].startswith("msgbatch_")


def test_sigkill_while_batch_pending_then_resume_resubmits_nothing(
    tmp_path, synthetic, sim_process
):
    n = 30
    data = synthetic(n)
    server = sim_process("--dataset", str(data), "--batch-delay", "4")
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--judge-model", "j", *FAST)
    _kill_while_pending(server, proc, n)
    at_kill = server.stats(bodies=True)["batches"]
    assert at_kill["pending"] >= 1
    assert checkpoint_calls(out / DB_NAME, "done", "role").count("judge_forward") < n
    assert len(_batches(out)) == at_kill["batches_created"]  # recorded before submission

    resumed = run_evaluator("--resume", "--out", out, "--quiet", timeout=120)
    assert resumed.returncode == 0, resumed.stderr

    after = server.stats(bodies=True)["batches"]
    # Re-attached, not resubmitted: the server saw no new batch and no request twice.
    assert after["batches_created"] == at_kill["batches_created"]
    assert after["requests_submitted"] == n
    assert all(count == 1 for count in after["bodies"].values())
    assert set(after["bodies"]) == _judge_shas(out)
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n
    assert s["possibly_duplicated_calls"] == 0  # a batched call is re-attached, never re-sent
    assert s["last_session"]["batches"]["judge"]["batches_reattached"] >= 1


def test_partial_failures_in_a_batch_are_retried(tmp_path, synthetic, sim_server):
    n = 20
    data = synthetic(n)
    server = sim_server(batch_delay_s=0.1, batch_fail_every=4, batch_expire_every=7)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j", *FAST) == 0
    b = server.stats(bodies=True)["batches"]
    failed = b["lines_failed"] + b["lines_expired"]
    assert b["lines_failed"] >= 1 and b["lines_expired"] >= 1
    # Each failed request went into a later batch once, and succeeded there.
    assert b["resubmitted_bodies"] == failed
    assert sorted(b["bodies"].values()).count(2) == failed
    assert b["batches_created"] >= 2
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n and s["n_failed"] == 0
    judge = s["last_session"]["batches"]["judge"]
    assert judge["failed_in_batch"] == failed and judge["resubmitted_after_failure"] == failed


def test_batches_are_split_at_the_request_limit(tmp_path, synthetic, sim_server):
    n = 20
    data = synthetic(n)
    # The server refuses any batch over 7 requests: the run must split to finish.
    server = sim_server(batch_limit=7)
    out = tmp_path / "run"
    rc = run_eval(
        data, server.base_url, out, "--judge-model", "j", *FAST, "--batch-max-requests", "7"
    )
    assert rc == 0
    b = server.stats()["batches"]
    assert b.get("rejected", 0) == 0
    assert b["batches_created"] >= 3 and b["requests_submitted"] == n
    assert all(size <= 7 for _, _, size in _batches(out))
    assert sum(size for _, _, size in _batches(out)) == n
    assert read_summary(out)["n_valid"] == n


def test_endpoint_without_a_batch_api_stops_before_sending(tmp_path, synthetic, sim_server):
    data = synthetic(3)
    server = sim_server()
    out = tmp_path / "run"
    # A judge URL whose server has chat completions but no /batches (like a vLLM server).
    no_batches = server.base_url + "/nowhere"
    result = run_evaluator(
        *("run", "--data", data, "--model", "m", "--base-url", server.base_url),
        *("--judge-base-url", no_batches, "--out", out, "--quiet", *FAST),
        *("--judge-prompt", "builtin"),
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "no usable Batch API" in result.stderr and "Traceback" not in result.stderr
    assert server.stats()["requests_total"] == 0


def test_batch_mode_settings_are_checked(tmp_path, synthetic, sim_server, capsys):
    data = synthetic(2)
    server = sim_server()
    url = server.base_url
    out = tmp_path / "run"
    assert run_eval(data, url, out, *FAST, "--batch-max-requests", "0") == 2
    assert "--batch-max-requests must be at least 1" in capsys.readouterr().err
    two = ("--judge-base-url", url, "--judge-base-url", url)
    assert run_eval(data, url, out, *FAST, *two) == 2
    assert "batch mode takes one --judge-base-url" in capsys.readouterr().err
    config = tmp_path / "run.toml"
    config.write_text('[judge]\nmode = "sometimes"\n')
    assert run_eval(data, url, out, "--config", config) == 2
    assert "--judge-mode must be one of online, batch" in capsys.readouterr().err
    assert server.stats()["requests_total"] == 0


def _kill_while_pending(server, proc, n: int) -> None:
    """SIGKILL the run once all `n` judge requests sit in batches the server has not finished."""
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the run ended before its batch did"
            b = server.stats()["batches"]
            if b.get("pending", 0) >= 1 and b["requests_submitted"] == n:
                break
            assert time.monotonic() < deadline, f"no batch pending: {b}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_restart_between_create_and_record_finds_the_batch(
    tmp_path, synthetic, sim_process, provider
):
    """The evaluator dies after the provider created a batch but before its id was recorded:
    --resume finds it (OpenAI: by the marker in its metadata; Anthropic: by creation time
    and size, then by the marker in each custom_id) and sends nothing again."""
    n = 12
    data = synthetic(n)
    server = sim_process("--dataset", str(data), "--batch-delay", "2")
    out = tmp_path / "run"
    judge = ("--judge-model", "j", "--judge-provider", provider)
    proc = spawn_run(data, server.base_url, out, *judge, *FAST, "--batch-idle", "1")
    _kill_while_pending(server, proc, n)
    # Forget the provider's ids, as if the process had died between create and record.
    conn = sqlite3.connect(out / DB_NAME)
    with conn:
        conn.execute("UPDATE batches SET state = 'submitting', provider_batch_id = NULL")
    conn.close()
    at_kill = server.stats()["batches"]
    time.sleep(2.2)  # the batches end meanwhile: results are there before the calls ask
    resumed = run_evaluator("--resume", "--out", out, "--quiet", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = server.stats(bodies=True)["batches"]
    assert after["batches_created"] == at_kill["batches_created"]
    assert all(count == 1 for count in after["bodies"].values())
    assert read_summary(out)["n_valid"] == n
    assert all(bid for _, bid, _ in _batches(out))  # ids recovered from the provider


def test_batch_never_created_is_sent_on_resume(tmp_path, synthetic, sim_server):
    """A batch recorded as submitting that the provider never saw: its requests are free."""
    n = 6
    data = synthetic(n)
    server = sim_server(batch_delay_s=0.1)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j", *FAST) == 0
    conn = sqlite3.connect(out / DB_NAME)
    with conn:  # one judge call's outcome lost, its batch never reached the provider
        key = conn.execute("SELECT key FROM calls WHERE role = 'judge_forward' LIMIT 1").fetchone()
        conn.execute("DELETE FROM calls WHERE key = ?", key)
        conn.execute(
            "INSERT INTO batches (marker, provider, stage, state, n_requests, created_at, "
            "updated_at) VALUES ('feedfacecafe', 'openai', 'judge', 'submitting', 1, ?, ?)",
            (time.time(), time.time()),
        )
        batch = conn.execute("SELECT max(id) FROM batches").fetchone()[0]
        conn.execute(
            "INSERT INTO batch_requests VALUES (?, ?, ?)", (batch, f"{key[0]}-feedfacecafe", key[0])
        )
    conn.close()
    created = server.stats()["batches"]["batches_created"]
    assert run_eval(data, server.base_url, out, "--judge-model", "j", *FAST, "--resume") == 0
    b = server.stats()["batches"]
    assert b["batches_created"] == created + 1 and b["requests_submitted"] == n + 1
    assert _batches(out)[-2][0] == "void"
    assert read_summary(out)["n_valid"] == n


def test_batch_refused_as_a_whole_stops_the_run_and_resume_finishes(
    tmp_path, synthetic, sim_server
):
    n = 12
    data = synthetic(n)
    server = sim_server(batch_limit=5)  # smaller than the batches this run will make
    out = tmp_path / "run"
    slow = ("--batch-idle", "2", "--batch-window", "60")
    result = run_evaluator(
        *("run", "--data", data, "--model", "m", "--base-url", server.base_url),
        *("--judge-model", "j", "--out", out, *FAST, *slow),
        *("--judge-prompt", "builtin"),
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "refused the batch" in result.stderr and "at most 5 requests" in result.stderr
    # The requests were not at fault: none is recorded as failed.
    assert checkpoint_calls(out / DB_NAME, "failed") == []
    assert server.stats()["batches"]["rejected"] >= 1
    assert run_cli("run", "--out", out, "--resume", "--batch-max-requests", "5", "--quiet") == 0
    assert read_summary(out)["n_valid"] == n
    assert server.stats()["batches"]["requests_submitted"] == n


def test_both_stages_in_batch_mode_send_nothing_online(tmp_path, synthetic, sim_server):
    n = 8
    data = synthetic(n)
    server = sim_server(persona="consistent", batch_delay_s=0.1)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j", "--mode", "batch", *FAST) == 0
    stats = server.stats(bodies=True)
    assert stats["bodies"] == {}  # no online request at all
    assert stats["batches"]["requests_submitted"] == 3 * n
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n
    assert set(s["last_session"]["batches"]) == {"generation", "judge"}
