"""Judge-only runs: a dataset that already holds the answers (the authors' responses schema,
or plain strings) is judged without a single generation call."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import read_results, read_summary, run_cli
from tests.standins import parquet_bytes, responses_rows

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow


def _judge_args(data, judge_url, out, *extra):
    return [
        "run",
        "--data",
        data,
        "--judge-model",
        "simulated-judge",
        "--judge-base-url",
        judge_url,
        "--out",
        out,
        "--quiet",
        "--judge-prompt",
        "builtin",
        *extra,
    ]


def _mixed_responses(tmp_path, name="responses.parquet"):
    """10 pairs in the reference's layout: 6 aligned, 4 unaligned -> PAC 60; two rows carry
    reasoning and citations columns as the authors' generation flow writes them."""
    rows = responses_rows("calibration-aligned-100", 6) + responses_rows(
        "calibration-unaligned-0", 4, start=7
    )
    for r in rows:
        r["for_response_reasoning"] = ""
        r["against_response_reasoning"] = ""
        r["for_response_citations"] = []
        r["against_response_citations"] = []
    rows[0]["for_response_reasoning"] = "Weighing the question first."
    rows[0]["for_response_citations"] = [
        {"url": "https://example.invalid/a", "title": "A", "text": "cited"}
    ]
    path = tmp_path / name
    path.write_bytes(parquet_bytes(rows))
    return path


def test_judge_only_run_sends_no_generation_call(tmp_path, sim_server, caplog):
    data = _mixed_responses(tmp_path)
    server = sim_server()
    out = tmp_path / "judged"
    caplog.set_level("INFO")
    assert run_cli(*_judge_args(data, server.base_url, out)) == 0
    assert "no generation call is made" in caplog.text
    stats = server.stats()
    assert stats["by_kind"].get("model", 0) == 0  # the server's own count
    assert stats["by_kind"]["judge"] == 10 + 1  # + the judge's preflight test call
    s = read_summary(out)
    assert s["judge_only"] is True and s["answers"] == "dataset"
    assert s["n_valid"] == 10 and s["n_failed"] == 0 and s["complete"]
    assert s["pac"] == 60.0 and s["ref"] == 0.0
    assert s["usage"]["gen"] == {"prompt_tokens": 0, "completion_tokens": 0}
    rows = read_results(out)
    assert all(r["status"] == "scored" for r in rows)
    assert rows[0]["for_response"].startswith("[SIMULATED ANSWER")
    assert rows[0]["for_reasoning"] == "Weighing the question first."
    assert rows[0]["for_citations"][0]["url"] == "https://example.invalid/a"
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert table[0]["for_response"]["content"] == rows[0]["for_response"]
    assert table[0]["for_response_reasoning"] == "Weighing the question first."
    assert table[0]["for_response_citations"] == [
        {"url": "https://example.invalid/a", "title": "A", "text": "cited"}
    ]
    assert "answers from the dataset" in (out / "report.md").read_text()
    # Resume: nothing left to send, the same outputs.
    before = server.stats()["requests_total"]
    assert run_cli(*_judge_args(data, server.base_url, out, "--resume")) == 0
    assert server.stats()["requests_total"] == before
    assert read_summary(out)["pac"] == 60.0


def test_plain_string_answers_with_judge_only_and_a_pool(tmp_path, sim_server):
    rows = responses_rows("calibration-one-refusal-50", 8)
    for r in rows:
        r["for_response"] = r["for_response"]["content"]
        r["against_response"] = r["against_response"]["content"]
    data = tmp_path / "plain.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    a, b = sim_server(), sim_server()
    out = tmp_path / "pool"
    args = _judge_args(data, a.base_url, out, "--judge-only", "--judge-base-url", b.base_url)
    assert run_cli(*args, "--model", "their-model") == 0
    s = read_summary(out)
    assert s["model"] == "their-model" and s["pac"] == 50.0 and s["ref_issue"] == 100.0
    for server in (a, b):
        assert server.stats()["by_kind"].get("model", 0) == 0
    judged = a.stats()["by_kind"].get("judge", 0) + b.stats()["by_kind"].get("judge", 0)
    assert judged == 8 + 1  # + the judge's preflight test call


def test_judge_only_in_batch_mode(tmp_path, sim_server):
    data = _mixed_responses(tmp_path)
    server = sim_server(batch_delay_s=0.2)
    out = tmp_path / "batch"
    fast = ("--judge-mode", "batch", "--batch-idle", "0.2", "--batch-poll", "0.1")
    assert run_cli(*_judge_args(data, server.base_url, out, *fast)) == 0
    stats = server.stats()
    assert stats["batches"]["requests_submitted"] == 10
    assert stats["by_kind"].get("model", 0) == 0
    assert read_summary(out)["pac"] == 60.0


def test_judge_only_without_answer_columns_is_an_error(tmp_path, synthetic, sim_server, capsys):
    server = sim_server()
    code = run_cli(*_judge_args(synthetic(3), server.base_url, tmp_path / "x", "--judge-only"))
    err = capsys.readouterr().err
    assert code == 2 and "--judge-only" in err and "for_response" in err
    assert server.stats()["requests_total"] == 0


def test_a_row_without_its_answers_is_a_bad_row(tmp_path, sim_server):
    rows = responses_rows("calibration-aligned-100", 4)
    rows[2]["against_response"] = None
    data = tmp_path / "gappy.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    out = tmp_path / "gappy"
    assert run_cli(*_judge_args(data, server.base_url, out)) == 0
    s = read_summary(out)
    assert s["n_valid"] == 3 and s["n_bad_rows"] == 1
    assert server.stats()["by_kind"]["judge"] == 3 + 1  # + the preflight test call


@pytest.mark.parametrize("missing", ["--judge-base-url"])
def test_judge_only_needs_a_judge_endpoint(tmp_path, capsys, missing):
    data = _mixed_responses(tmp_path)
    code = run_cli("run", "--data", data, "--out", tmp_path / "x", "--judge-prompt", "builtin")
    assert code == 2 and missing in capsys.readouterr().err
