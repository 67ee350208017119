"""A real run fails early and loudly, or finishes true: preflight, circuit breaker, honest
exit codes, --retry-failed, the dataset's columns checked up front, truthful progress.

Every server here is the strict simulated server (it serves only the names it is given
and answers others as vLLM does), over loopback HTTP.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluator.breaker import BreakerRules, BreakerSettingError, FailureBreaker
from evaluator.preflight import nearest
from evaluator.run import EXIT_BREAKER, EXIT_FAILED_PAIRS, EXIT_PREFLIGHT
from tests.conftest import (
    ROOT,
    SUBPROCESS_ENV,
    checkpoint_calls,
    evaluator_cmd,
    read_results,
    read_summary,
    run_cli,
    run_eval,
    run_evaluator,
)
from workers.simulated.data import synthetic_row


def _requests(server) -> int:
    return server.stats()["requests_total"]


def _bodies(server) -> dict[str, int]:
    return server.stats(bodies=True)["bodies"]


# -- preflight -------------------------------------------------------------------------
@pytest.mark.slow
def test_typo_in_model_exits_within_seconds_naming_the_served_model(tmp_path, synthetic, sim_process):
    server = sim_process("--served-model-name", "served-model", "--served-model-name", "j")
    began = time.monotonic()
    proc = run_evaluator(
        *("run", "--data", synthetic(50), "--model", "served-modle", "--judge-model", "j"),
        *("--judge-prompt", "builtin"),
        *("--base-url", server.base_url, "--out", tmp_path / "run"),
        timeout=60,
    )
    took = time.monotonic() - began
    assert proc.returncode == EXIT_PREFLIGHT, proc.stderr
    assert took < 10, took
    err = proc.stderr
    assert "does not serve `served-modle`" in err and "Did you mean `served-model`?" in err
    assert "The model `served-modle` does not exist." in err  # the server's own words
    assert "Traceback" not in err
    assert server.stats()["requests_total"] < 10
    assert "gen_for" not in str(checkpoint_calls(tmp_path / "run" / "checkpoint.sqlite", "done"))


@pytest.mark.slow
def test_base_url_without_v1_is_named(tmp_path, synthetic, sim_server, caplog):
    server = sim_server(served_names=("m", "j"))
    root = server.base_url.removesuffix("/v1")
    code = run_eval(synthetic(5), root, tmp_path / "run", "--judge-model", "j")
    assert code == EXIT_PREFLIGHT
    assert f"is `/v1` missing from --base-url? (try {root}/v1)" in caplog.text
    assert server.stats()["by_kind"].get("model", 0) == 0


@pytest.mark.slow
def test_default_judge_not_served_is_named_before_any_paid_call(tmp_path, synthetic, sim_server, caplog):
    server = sim_server(served_names=("m",))
    code = run_eval(synthetic(5), server.base_url, tmp_path / "run")
    assert code == EXIT_PREFLIGHT
    assert "does not serve `google/gemma-3-27b-it` (the default judge)" in caplog.text
    assert "--judge-model" in caplog.text and "It serves: `m`" in caplog.text
    assert server.stats()["by_kind"].get("model", 0) == 0  # no generation was paid for


@pytest.mark.slow
def test_judge_preflight_checks_structured_output(tmp_path, synthetic, sim_server, caplog):
    server = sim_server(served_names=("m", "j"))
    assert run_eval(synthetic(3), server.base_url, tmp_path / "run", "--judge-model", "j") == 0
    kinds = server.stats()["by_kind"]
    # The judge is probed once in its real shape (schema included); the model under test is
    # listed on /models, so it needs no test call.
    assert kinds["judge"] == 3 + 1 and kinds["model"] == 6
    # The test call is counted in the run's cost, never stored as a call.
    summary = read_summary(tmp_path / "run")
    assert summary["cost"]["judge"]["calls"] == 3
    assert summary["cost"]["judge"]["preflight_calls"] == 1


@pytest.mark.slow
def test_no_preflight_skips_the_test_calls(tmp_path, synthetic, sim_server):
    server = sim_server(served_names=("m", "j"))
    out = tmp_path / "run"
    assert run_eval(synthetic(3), server.base_url, out, "--judge-model", "j", "--no-preflight") == 0
    assert server.stats()["by_kind"]["judge"] == 3


@pytest.mark.slow
def test_runs_against_the_simulator_are_stamped_simulation(tmp_path, synthetic, sim_server):
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(synthetic(3), server.base_url, out, "--judge-model", "j") == 0
    assert read_summary(out)["simulated"] is True
    assert "SIMULATION" in (out / "report.md").read_text()


# -- failures, honest endings, the breaker, --retry-failed --------------------------------
def _dataset_with_long_questions(path, n: int, long_ids: set[int]):
    rows = []
    for i in range(1, n + 1):
        row = synthetic_row(i)
        if i in long_ids:
            row["for_question"] += " Some context." * 400  # ~5,600 bytes: over the window
        rows.append(row)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.mark.slow
def test_context_overflow_finishes_with_its_own_exit_code_and_reasons(tmp_path, sim_server, capsys):
    # A window that fits max_tokens (4096) and a short prompt, not a long one.
    server = sim_server(served_names=("m", "j"), max_model_len=4096 + 900)
    data = _dataset_with_long_questions(tmp_path / "d.jsonl", 12, {4, 9})
    out = tmp_path / "run"
    code = run_cli(*_run(data, server.base_url, out), "--judge-model", "j")
    assert code == EXIT_FAILED_PAIRS
    s = read_summary(out)
    assert s["all_pairs_have_verdicts"] is False and s["n_failed"] == 2 and s["n_valid"] == 10
    (group,) = s["failures"]
    assert group["class"] == "context_length" and group["stage"] == "generation"
    assert group["http_status"] == 400 and group["count"] == 2
    assert group["example_pair_id"] == 4 and "maximum context length" in group["message"]
    report = (out / "report.md").read_text()
    assert "## Failures" in report and "maximum context length" in report
    printed = capsys.readouterr().out
    assert "2 x generation context_length (HTTP 400)" in printed
    # `report` and `status` say the same.
    assert run_cli("report", out) == EXIT_FAILED_PAIRS
    assert run_cli("status", out) == 0
    assert "2 x generation context_length (HTTP 400)" in capsys.readouterr().out


@pytest.mark.slow
def test_clean_run_has_its_field_and_exit_0(tmp_path, synthetic, sim_server):
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(synthetic(4), server.base_url, out, "--judge-model", "j") == 0
    s = read_summary(out)
    assert s["all_pairs_have_verdicts"] is True and s["failures"] == []


@pytest.mark.slow
def test_breaker_trips_mid_run_then_retry_failed_finishes_sending_only_those(
    tmp_path, synthetic, sim_process, caplog
):
    data = synthetic(200)
    names = ("--served-model-name", "m", "--served-model-name", "j")
    # After 60 requests the server stops serving the model (restarted with another name).
    broken = sim_process("--dataset", str(data), *names, "--unserve-after", "60")
    out = tmp_path / "run"
    args = (*_run(data, broken.base_url, out), "--judge-model", "j")
    code = run_cli(*args, "--concurrency", "4", "--judge-concurrency", "4")
    assert code == EXIT_BREAKER
    assert "calls in a row failed with invalid_request" in caplog.text
    assert "The model `" in caplog.text and "does not exist." in caplog.text
    assert "--retry-failed" in caplog.text
    sent_while_broken = broken.stats()["requests_total"]
    assert sent_while_broken < 60 + 40  # stopped at once, not 600 calls later
    failed = set(checkpoint_calls(out / "checkpoint.sqlite", "failed", "body_sha"))
    done = set(checkpoint_calls(out / "checkpoint.sqlite", "done", "body_sha"))
    assert len(failed) >= 20

    # A plain resume keeps the final failures (they would fail again as they were) ...
    fixed = sim_process("--dataset", str(data), *names)
    # ... --retry-failed sends them again, once the cause is fixed: every pair completes.
    code = run_cli(
        "run", "--resume", "--out", out, "--base-url", fixed.base_url, "--retry-failed", "--quiet"
    )
    assert code == 0
    s = read_summary(out)
    assert s["all_pairs_have_verdicts"] and s["n_valid"] == 200
    resent = _bodies(fixed)
    # By the server's own count: no call that had an answer was sent again; every failed
    # call was sent once more (besides the judge's preflight test call).
    assert not set(resent) & done
    assert failed <= set(resent)
    assert all(n == 1 for n in resent.values())


@pytest.mark.slow
def test_resume_may_change_only_the_endpoint(tmp_path, synthetic, sim_server):
    first = sim_server(fail_auth_after=10)
    out = tmp_path / "run"
    data = synthetic(20)
    assert run_eval(data, first.base_url, out, "--judge-model", "j") == 3  # key revoked
    second = sim_server()
    # No --data, --model: the stored run config is the base; the judge follows the URL.
    assert run_cli("run", "--resume", "--out", out, "--base-url", second.base_url, "--quiet") == 0
    assert read_summary(out)["n_valid"] == 20
    assert second.stats()["requests_total"] > 0


@pytest.mark.slow
def test_resume_refuses_a_new_model_name_with_the_reuse_hint(tmp_path, synthetic, sim_server, capsys):
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(synthetic(3), server.base_url, out, "--judge-model", "j") == 0
    code = run_cli("run", "--resume", "--out", out, "--model", "m2", "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and "model: run has 'm', now 'm2'" in err and f"--reuse {out}" in err


def test_retry_failed_needs_resume(tmp_path, synthetic, capsys):
    code = run_cli("run", "--data", synthetic(2), "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                   "--out", tmp_path / "o", "--retry-failed")
    assert code == 2 and "--retry-failed needs --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_calls_sent_counts_calls_that_left(tmp_path, synthetic, sim_server):
    server = sim_server(served_names=("m", "j"))
    out = tmp_path / "run"
    args = ("--judge-model", "j", "--no-preflight", "--concurrency", "16")
    prices = ("--price-in", "10", "--price-out", "10", "--judge-price-in", "10")
    code = run_eval(
        synthetic(60), server.base_url, out, *args, *prices, "--judge-price-out", "10",
        "--max-cost", "0.3",
    )
    assert code == 76  # stopped by the budget with calls admitted but never sent
    session = read_summary(out)["last_session"]
    assert session["calls_sent"] == server.stats()["requests_total"] > 0


# -- the dataset's columns, checked once ----------------------------------------------------
def _misspelled_rows(n: int) -> list[dict]:
    rows = []
    for i in range(1, n + 1):
        row = synthetic_row(i)
        row["for_qestion"] = row.pop("for_question")
        rows.append(row)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_misspelled_required_column_is_one_message_before_any_call(tmp_path, sim_server, capsys, ext):
    rows = _misspelled_rows(40)
    path = tmp_path / f"d.{ext}"
    if ext == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    elif ext == "csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    server = sim_server()
    code = run_eval(path, server.base_url, tmp_path / "run", "--judge-model", "j")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err  # one line, not one per row
    assert "`for_question` (did you mean `for_qestion`?)" in err
    assert server.stats()["requests_total"] == 0


@pytest.mark.slow
def test_capitalised_optional_column_is_read_with_one_warning(tmp_path, sim_server, caplog):
    rows = []
    for i in range(1, 9):
        row = synthetic_row(i)
        row["Category"] = row.pop("category") or "Politics"
        rows.append(row)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert run_eval(path, server.base_url, out, "--judge-model", "j") == 0
    notes = [r for r in caplog.records if "is read as `category`" in r.getMessage()]
    assert len(notes) == 1
    by_category = read_summary(out)["by_category"]
    assert "uncategorized" not in by_category and sum(v["n"] for v in by_category.values()) == 8
    assert {r["category"] for r in read_results(out)} == {r["Category"] for r in rows}


@pytest.mark.slow
def test_bad_rows_log_a_few_lines_and_one_count(tmp_path, sim_server, caplog):
    rows = [synthetic_row(i) for i in range(1, 31)]
    for row in rows[5:25]:
        row["issue_scale"] = 9
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    with caplog.at_level(logging.WARNING):
        assert run_eval(path, server.base_url, tmp_path / "run", "--judge-model", "j") == 0
    lines = [r.getMessage() for r in caplog.records if "bad input row" in r.getMessage()]
    assert sum("skipped bad input row id" in line for line in lines) == 5
    assert any("20 bad input rows in all" in line for line in lines)


@pytest.mark.slow
def test_all_rows_bad_is_an_error(tmp_path, sim_server):
    rows = [{**synthetic_row(i), "issue_scale": 0} for i in range(1, 6)]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    assert run_eval(path, server.base_url, tmp_path / "run", "--judge-model", "j") == 2


# -- progress, pipes, small things ------------------------------------------------------
@pytest.mark.slow
def test_progress_bars_start_at_the_calls_already_done_after_a_resume(tmp_path, synthetic, sim_server, capsys):
    server = sim_server()
    data = synthetic(20)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j", "--limit", "10") == 0
    capsys.readouterr()
    code = run_cli(
        "run", "--resume", "--out", out, "--limit", "20", "--progress", "bar",
        "--progress-interval", "1",
    )
    assert code == 0
    err = capsys.readouterr().err
    # Every frame of each bar counts the calls the checkpoint already held: the first
    # shows them (10 pairs x 2 generations, x 1 judge call), none shows fewer.
    gen = [int(n) for n in re.findall(r"generation\s+\d+%\|[^|]*\| (\d+)/40", err)]
    judge = [int(n) for n in re.findall(r"judge\s+\d+%\|[^|]*\| (\d+)/20", err)]
    assert gen and gen[0] == 20 and min(gen) == 20 and gen[-1] == 40
    assert judge and judge[0] == 10 and min(judge) == 10 and judge[-1] == 20
    assert "Traceback" not in err


@pytest.mark.slow
def test_output_to_a_closed_pipe_ends_quietly(tmp_path, synthetic, sim_server):
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(synthetic(3), server.base_url, out, "--judge-model", "j") == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails
    proc = subprocess.run(
        evaluator_cmd("report", out), cwd=ROOT, env=SUBPROCESS_ENV, stdout=write_end,
        stderr=subprocess.PIPE, text=True, timeout=120,
    )
    os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_version_and_exit_codes_in_help(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("--version")
    assert exc.value.code == 0 and "python -m evaluator 0." in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli("run", "--help")
    text = capsys.readouterr().out
    for code in ("0 ", "2 ", "4 ", "6 ", "7 ", "75 ", "76 "):
        assert f"\n  {code}" in text
    assert "--max-failures" in text and "--retry-failed" in text and "--no-preflight" in text


@pytest.mark.slow
def test_providers_usual_key_variable_is_used_and_named(tmp_path, synthetic, sim_server, monkeypatch, caplog):
    key = "sk-test-usual-variable-1234567890"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    server = sim_server(api_key=key)
    out = tmp_path / "run"
    caplog.set_level(logging.INFO)
    assert run_eval(synthetic(3), server.base_url, out, "--judge-model", "j") == 0
    assert "model endpoint: using the API key in OPENAI_API_KEY" in caplog.text
    assert key not in caplog.text
    assert key.encode() not in (out / "checkpoint.sqlite").read_bytes()


# -- the breaker's rules -------------------------------------------------------------------
def test_breaker_rules():
    assert BreakerRules.parse("20,10%") == BreakerRules(20, 0.10)
    assert BreakerRules.parse("5") == BreakerRules(5, None)
    assert BreakerRules.parse("off") == BreakerRules(None, None)
    for bad in ("x", "0%", "100%", "-3", "5,,"):
        with pytest.raises(BreakerSettingError):
            BreakerRules.parse(bad)
    b = FailureBreaker(BreakerRules(3, None))
    assert b.failure("judge", "invalid_request", 404, "no") is None
    assert b.failure("judge", "context_length", 400, "long") is None  # another class: run restarts
    assert b.failure("judge", "context_length", 400, "long") is None
    tripped = b.failure("judge", "context_length", 400, "long")
    assert tripped is not None and tripped.count == 3 and tripped.http_status == 400
    b = FailureBreaker(BreakerRules(None, 0.10))
    for i in range(200):
        result = b.failure("gen", "transient", None, "x") if i % 8 == 0 else b.success("gen")
        assert result is None  # 25 of 200: 12.5%, but only judged once 200 calls ended
    assert b.failure("gen", "transient", None, "x") is not None
    content = FailureBreaker(BreakerRules(2, None))
    for _ in range(5):
        assert content.failure("gen", "content_filter", 200, "filtered") is None


def test_nearest_served_name():
    assert nearest("served-modle", ["served-model", "other"]) == "served-model"
    assert nearest("Gemma", ["gemma", "x"]) == "gemma"
    assert nearest("zzz", ["served-model"]) is None


def _run(data, base_url, out) -> tuple:
    return (
        *("run", "--data", data, "--model", "m", "--base-url", base_url, "--out", out),
        *("--quiet", "--judge-prompt", "builtin"),
    )



@pytest.mark.slow
def test_progress_fits_80_columns_and_shows_retries_and_waits(monkeypatch):
    import asyncio
    import io

    from evaluator.progress import Activity, Progress, Resumed
    from evaluator.run.outcomes import RunStats

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")

    async def go() -> str:
        stats, screen = RunStats(), Terminal()
        progress = Progress(
            stats, 115_000, 2, mode="bar", interval_s=1, stream=screen,
            resumed=Resumed({"gen": 96_521, "judge": 40_000}, 40_000),
            activity=lambda: Activity(retries=123, rate_limited=45, waiting_s=12.0),
        )
        progress.start()
        stats.done["gen"] += 10
        stats.failed["judge"] = 3
        await asyncio.sleep(0.6)
        await progress.stop()
        return screen.getvalue()

    frames = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", asyncio.run(go())).replace("\r", "\n")
    lines = [line for line in frames.splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert any("96531/230000" in line for line in lines)
    assert any("fail 3" in line for line in lines)
    status = [line for line in lines if "retries 123" in line]
    assert status and "429s 45" in status[-1] and "rate-limit wait 12s" in status[-1]
