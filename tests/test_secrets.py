"""Keys never leave the auth headers (issue 15, items 5, 6 and a key ending in a carriage
return): refused when put in a URL or malformed, and removed from everything a hostile
server sends back. Each test greps every file of the run directory (the SQLite file and
its WAL included), the evaluator's log and a /metrics scrape for the key's bytes."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from evaluator.store import DB_NAME
from tests.conftest import (
    SUBPROCESS_ENV,
    evaluator_cmd,
    read_results,
    read_summary,
    run_args,
    run_evaluator,
)
from workers.simulated.data import synthetic_row
from workers.simulated.hostile import MARK_FAIL_WITH_KEY, Hostile

KEY = "sk-hostile-0123456789abcdefXYZ"
JUDGE_KEY = "sk-judgekey-9876543210zyxwvuQ"
# What a cut before redaction would have left of the key (its first characters).
KEY_PREFIX = KEY[:7]




def _dataset(path: Path, n: int, failing: set[int] = frozenset()) -> Path:
    with path.open("wb") as fh:
        for i in range(1, n + 1):
            row = synthetic_row(i, section_chars=60)
            if i in failing:
                row["for_question"] += " " + MARK_FAIL_WITH_KEY
            fh.write(orjson.dumps(row) + b"\n")
    return path


def _files_holding(root: Path, *needles: str) -> list[str]:
    """Every file under `root` whose bytes hold one of `needles`."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {n!r}" for n in needles if n.encode() in data]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**keys: str) -> dict[str, str]:
    return {**SUBPROCESS_ENV, **keys}


@pytest.mark.slow
def test_a_key_in_the_base_url_is_refused_without_showing_it(tmp_path, hostile):
    server = hostile(Hostile())
    host = server.base_url.removeprefix("http://")
    data = _dataset(tmp_path / "d.jsonl", 2)
    out = tmp_path / "run"
    for url in (f"http://user:{KEY}@{host}", f"http://{KEY}@{host}"):
        proc = run_evaluator(*run_args(data, url, out), timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "--base-url" in proc.stderr and "user name or password" in proc.stderr
        assert KEY_PREFIX not in proc.stderr and "user:" not in proc.stderr
    # The same in a config file, for the judge.
    config = tmp_path / "run.toml"
    config.write_text(f'judge_base_url = "http://me:{KEY}@{host}"\n')
    proc = run_evaluator(
        *run_args(data, server.base_url, out), "--config", config, "--judge-model", "j", timeout=120
    )
    assert proc.returncode == 2 and "--judge-base-url" in proc.stderr, proc.stderr
    assert KEY_PREFIX not in proc.stderr
    # A URL holding the configured key elsewhere (a query string) is refused too.
    proc = subprocess.run(
        evaluator_cmd(
            *run_args(data, f"{server.base_url}?key={KEY}", out), "--api-key-env", "VB_KEY"
        ),
        env=_env(VB_KEY=KEY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "contains the API key of VB_KEY" in proc.stderr, proc.stderr
    assert KEY_PREFIX not in proc.stderr
    assert server.stats()["requests_total"] == 0  # nothing was sent
    assert not out.exists() or _files_holding(out, KEY_PREFIX) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "said"),
    [(KEY + "\r", "a carriage return at its end"), (KEY[:10] + "\n" + KEY[10:], "a line break")],
)
def test_a_key_with_control_characters_is_refused_naming_the_variable(
    tmp_path, hostile, value, said
):
    server = hostile(Hostile(), api_key=KEY)
    data = _dataset(tmp_path / "d.jsonl", 2)
    out = tmp_path / "run"
    proc = subprocess.run(
        evaluator_cmd(*run_args(data, server.base_url, out), "--api-key-env", "VB_KEY"),
        env=_env(VB_KEY=value),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "VB_KEY" in proc.stderr and said in proc.stderr
    assert KEY_PREFIX not in proc.stderr
    assert server.stats()["requests_total"] == 0
    assert _files_holding(out, KEY_PREFIX) == []


@pytest.mark.slow
def test_a_reflected_key_reaches_no_file_log_or_metric(tmp_path, hostile):
    """The model's server echoes its key in answers (plain and JSON-escaped), citations and
    verdicts, and refuses two questions with a non-JSON body that holds the key across the
    300-byte cut of error messages. The judge has a key of its own on another server."""
    model = hostile(Hostile(reflect_key=True, fail_with_key=True), api_key=KEY, latency_median_ms=30)
    judge = hostile(Hostile(reflect_key=True), api_key=JUDGE_KEY)
    n = 12
    data = _dataset(tmp_path / "d.jsonl", n, failing={3, 7})
    out = tmp_path / "run"
    port = _free_port()
    args = run_args(data, model.base_url, out)
    args.remove("--quiet")  # every log line the run writes is checked
    proc = subprocess.Popen(
        evaluator_cmd(
            *args,
            *("--api-key-env", "VB_KEY", "--judge-base-url", judge.base_url),
            *("--judge-model", "j", "--judge-api-key-env", "VB_JUDGE_KEY"),
            *("--concurrency", "2", "--metrics-port", port, "--progress", "log"),
        ),
        env=_env(VB_KEY=KEY, VB_JUDGE_KEY=JUDGE_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    scrapes = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    scrapes.append(r.read().decode())
            except OSError:
                pass
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    log = stdout.decode() + stderr.decode()
    assert proc.returncode == 6, log  # the two refused questions fail their pairs
    assert "Traceback" not in log
    # The server did echo the keys, and the answers were kept (redacted, not dropped).
    assert model.stats()["by_kind"]["hostile_reflected"] >= 2 * n - 2
    assert judge.stats()["by_kind"]["hostile_reflected"] >= n - 2
    results = read_results(out)
    assert sum(r.get("status") == "failed" for r in results) == 2
    text = (out / "results.jsonl").read_text()
    assert "your key is [REDACTED]" in text and "the caller's key: [REDACTED]" in text
    failed = [r for r in results if r.get("status") == "failed"]
    # The refusal's message is kept, cut after the key was taken out (its 300-byte cut fell
    # inside the key).
    assert all(r["error"].endswith("x" * 20 + "[REDACTED]") for r in failed), failed
    assert all("thinking about [REDACTED]" in str(r) for r in results)  # the escaped form
    summary = read_summary(out)
    assert summary["n_valid"] == n - 2
    # No key, nor the first characters of one, anywhere.
    needles = (KEY, JUDGE_KEY, KEY_PREFIX, JUDGE_KEY[:7])
    assert (out / DB_NAME).exists() and (out / "results.parquet").exists()
    assert _files_holding(out, *needles) == []
    # Parquet compresses its pages, so its bytes prove nothing: read its values.
    import pyarrow.parquet as pq

    cells = str(pq.read_table(out / "results.parquet").to_pylist())
    assert "[REDACTED]" in cells and not any(n in cells for n in needles)
    assert scrapes and any("valbench_requests_started_total" in s for s in scrapes)
    for needle in needles:
        assert needle not in log
        assert not any(needle in s for s in scrapes)


def test_the_log_filter_redacts_keys_in_any_record(caplog):
    import logging

    from evaluator.secrets import redacted_logs

    with redacted_logs((KEY,)):
        logging.getLogger("evaluator").warning("endpoint said %s", f"bad key {KEY}")
        try:
            raise ValueError(f"boom {KEY}")
        except ValueError:
            logging.getLogger("evaluator").exception("failed")
    logging.getLogger("evaluator").warning("after: %s", "plain")
    text = caplog.text
    assert "bad key [REDACTED]" in text and "boom [REDACTED]" in text
    assert KEY not in text and "after: plain" in text
    assert logging.getLogger("evaluator").filters == []


def test_keys_are_redacted_before_an_error_message_is_cut():
    from workers.openai_compat import ChatWire

    wire = ChatWire()
    raw = ("x" * 290 + KEY + " trailing").encode()
    _, cut_first = wire.error(500, raw)  # what the wire alone keeps: the key's start
    assert KEY[:10] in cut_first
    from workers.client import EndpointConfig, HTTPClient

    client = HTTPClient(EndpointConfig("http://127.0.0.1:9/v1", api_key=KEY), wire)
    attempt = client._answer(500, {}, raw, time.monotonic())
    assert KEY_PREFIX not in attempt.result.message and "[REDA" in attempt.result.message
