"""A hostile or broken server cannot hang the run, crash it, or make it hold unbounded
memory (issue 15, items 8-11): waits are bounded and logged, odd rate-limit headers and
nonsense usage are ignored, oversized answers are given up while they are read, and an
answer that arrived while the process was stopped is read, not paid for again."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time

import orjson
import pytest
from aiohttp import web

from evaluator.store import DB_NAME
from tests import virtual_time
from tests.conftest import (
    SUBPROCESS_ENV,
    checkpoint_calls,
    evaluator_cmd,
    read_summary,
    run_args,
    run_eval,
    run_evaluator,
)
from workers.base import CallFailure, Completion, ErrorClass, clean_usage
from workers.client import EndpointConfig, HTTPClient
from workers.limits import per_minute_bucket
from workers.openai_compat import ChatWire
from workers.simulated.data import write_synthetic_dataset
from workers.simulated.hostile import Hostile
from workers.transport import Deadline


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or line.startswith("error:")]


# -- item 8: bounded waiting -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("retry_after", "reset_far", "said"),
    [
        ("86400", False, "asked to wait 86,400s"),
        ("inf", False, "asked to wait without end"),
        ("not-a-number", True, "asked to wait"),  # only the far-off x-ratelimit reset counts
    ],
)
def test_a_wait_beyond_max_retry_wait_stops_the_run_resumably(
    tmp_path, hostile, retry_after, reset_far, said
):
    bad = Hostile(retry_after=retry_after, retry_after_from=12, reset_far=reset_far)
    server = hostile(bad)
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 20, section_chars=60)
    out = tmp_path / "run"
    start = time.monotonic()
    proc = run_evaluator(*run_args(data, server.base_url, out, "--concurrency", "2"), timeout=300)
    assert proc.returncode == 9, proc.stderr
    assert time.monotonic() - start < 120  # stopped, not waited (the default cap is 300 s)
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and said in errors[0] and "--max-retry-wait 300s" in errors[0]
    assert "--resume" in errors[0]
    done = len(checkpoint_calls(out / DB_NAME, "done"))
    assert 0 < done < 60
    # Once the wait is over (here: the server behaves again), --resume finishes the run.
    server.server.hostile.retry_after = None
    proc = run_evaluator("--resume", "--out", out, "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_summary(out)["n_valid"] == 20


@pytest.mark.slow
def test_one_endpoint_of_a_pool_asking_a_long_wait_does_not_stop_the_run(tmp_path, hostile):
    """Only a call that would have to wait stops the run: with another endpoint free, the
    paused one is left out until its wait is over."""
    slow = hostile(Hostile(retry_after="86400", retry_after_from=3))
    good = hostile(Hostile())
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 10, section_chars=60)
    out = tmp_path / "run"
    assert run_eval(data, slow.base_url, out, "--base-url", good.base_url, "--judge-model", "j") == 0
    assert read_summary(out)["n_valid"] == 10
    assert slow.stats()["by_kind"]["hostile_429"] >= 1


@pytest.mark.slow
def test_a_batch_api_asking_to_wait_too_long_stops_the_run(tmp_path, hostile):
    server = hostile(Hostile(retry_after="86400", retry_after_path="/files"))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 4, section_chars=60)
    batch = ("--judge-mode", "batch", "--batch-idle", "0.2", "--batch-poll", "0.1")
    args = run_args(data, server.base_url, tmp_path / "run", "--judge-model", "j", *batch)
    proc = run_evaluator(*args, timeout=300)
    assert proc.returncode == 9, proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "asked to wait 86,400s" in errors[0], proc.stderr
    assert server.stats()["batches"].get("batches_created", 0) == 0  # none was submitted


@pytest.mark.slow
def test_a_short_wait_is_waited_and_logged(tmp_path, hostile, caplog):
    caplog.set_level(logging.INFO, logger="evaluator")
    server = hostile(Hostile(retry_after="1", retry_after_from=4))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 6, section_chars=60)
    out = tmp_path / "run"

    def behave_later():  # a few 429s, then the server answers again
        time.sleep(2.5)
        server.server.hostile.retry_after = None

    import threading

    threading.Thread(target=behave_later, daemon=True).start()
    assert run_eval(data, server.base_url, out, "--max-retry-wait", "5") == 0
    waits = [r.getMessage() for r in caplog.records if "waiting 1.0s for" in r.getMessage()]
    assert waits and "HTTP 429, asked by the server" in waits[0]
    # At most one line per endpoint every 30 s: the 429s past the first are counted, not shown.
    assert len(waits) <= 2  # one per stage's endpoint
    assert server.stats()["by_kind"]["hostile_429"] >= 2


@pytest.mark.slow
def test_max_retry_wait_zero_stops_at_the_first_asked_wait(tmp_path, hostile):
    server = hostile(Hostile(retry_after="2", retry_after_from=2))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 4, section_chars=60)
    code = run_eval(data, server.base_url, tmp_path / "run", "--max-retry-wait", "0")
    assert code == 9


# -- item 9: nonsense from a server or a flag ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-limit-requests": "0.01"},
        {"x-ratelimit-limit-requests": "-5", "x-ratelimit-remaining-requests": "-1"},
        {"x-ratelimit-limit-tokens": "nan", "x-ratelimit-remaining-tokens": "inf"},
    ],
    ids=["0.01", "negative", "nan"],
)
def test_unusable_rate_limit_headers_are_ignored_with_one_warning(
    tmp_path, hostile, caplog, headers
):
    server = hostile(Hostile(headers=headers))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 10, section_chars=60)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j") == 0
    warnings = [r.getMessage() for r in caplog.records if "not usable numbers" in r.getMessage()]
    # Once per endpoint (the model's and the judge's pools each have one), not per answer.
    assert len(warnings) == 2, warnings
    assert all(name in warnings[0] for name in headers)
    assert read_summary(out)["n_valid"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["string", "list", "negative", "float"])
def test_nonsense_usage_counts_as_unknown(tmp_path, hostile, kind):
    server = hostile(Hostile(usage=kind))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 5, section_chars=60)
    out = tmp_path / "run"
    prices = ("--price-in", "1", "--price-out", "1", "--judge-price-in", "1", "--judge-price-out", "1")
    code = run_eval(data, server.base_url, out, *prices, "--max-cost", "5")
    assert code == 0
    summary = read_summary(out)
    assert summary["n_valid"] == 5
    assert summary["cost"]["total_usd"] == 0.0  # unknown usage costs nothing known
    assert summary["cost"]["gen"]["tokens_in"] == 0 == summary["cost"]["judge"]["tokens_out"]
    usages = checkpoint_calls(out / DB_NAME, "done", "usage")
    assert usages and set(usages) == {"{}"}


def test_clean_usage_keeps_real_usage_and_drops_nonsense():
    real = {
        "input_tokens": 10,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
        "service_tier": "standard",
        "server_tool_use": {"web_search_requests": 1},
        "prompt_tokens_details": None,
    }
    assert clean_usage(real) is real
    for bad in ("lots", [1], {"prompt_tokens": -1}, {"completion_tokens": True},
                {"prompt_tokens_details": {"cached_tokens": 2.5}}, {"prompt_tokens": 10**12}):
        assert clean_usage(bad) == {}


@pytest.mark.slow
def test_rpm_below_one_is_a_slow_rate_not_a_crash(tmp_path, sim_server):
    bucket = per_minute_bucket(0.5)  # one request every two minutes
    assert bucket.max_rate == 1.0 and bucket.time_period == 120.0
    # A real run: one judged pair of a judge-only dataset at --judge-rpm 0.5.
    data = tmp_path / "answers.jsonl"
    row = write_synthetic_dataset(tmp_path / "d.jsonl", 1, section_chars=60).read_bytes()
    pair = orjson.loads(row)
    pair.update(for_response="Yes, because of A.", against_response="No, because of B.")
    data.write_bytes(orjson.dumps(pair) + b"\n")
    server = sim_server()
    code = run_eval(data, server.base_url, tmp_path / "run", "--judge-rpm", "0.5", "--judge-model", "j")
    assert code == 0
    assert read_summary(tmp_path / "run")["n_valid"] == 1


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--rpm", "0", "--rpm must be above 0"),
        ("--rpm", "nan", "--rpm must be above 0"),
        ("--tpm", "inf", "--tpm must be above 0"),
        ("--timeout", "-1", "--timeout must be above 0"),
        ("--concurrency", "0", "--concurrency must be at least 1"),
        ("--concurrency", "100000000", "at most 100,000"),
        ("--max-retry-wait", "nan", "--max-retry-wait must be at least 0"),
        ("--max-response-mb", "0", "--max-response-mb must be above 0"),
        ("--price-in", "-1", "--price-in must be at least 0"),
        ("--retry-budget", "-1", "--retry-budget must be at least 0"),
        ("--batch-poll", "nan", "--batch-poll must be above 0"),
        ("--drain-timeout", "nan", "argument --drain-timeout: must be at least 0"),
        ("--metrics-port", "70000", "argument --metrics-port: must be at least 0 and at most 65535"),
        ("--progress-interval", "0", "argument --progress-interval: must be above 0"),
    ],
)
def test_every_numeric_flag_is_checked_with_one_line(tmp_path, capsys, flag, value, said):
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 2)
    from evaluator.cli import main

    try:
        code = main([str(a) for a in run_args(data, "http://127.0.0.1:9/v1", tmp_path / "r")]
                    + [flag, value])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert said in err and "Traceback" not in err
    assert sum(line.startswith(("error:", "python -m evaluator")) for line in err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before anything was created


@pytest.mark.slow
@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ("rpm = nan", "--rpm must be above 0"),
        ("concurrency = 10_000_000", "--concurrency must be at least 1"),
        ("max_retry_wait_s = -inf", "--max-retry-wait must be"),
        ("timeout_s = 0", "--timeout must be above 0"),
    ],
)
def test_every_numeric_config_key_is_checked(tmp_path, toml, said):
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 2)
    config = tmp_path / "run.toml"
    config.write_text(toml + "\n")
    proc = run_evaluator(
        *run_args(data, "http://127.0.0.1:9/v1", tmp_path / "r"), "--config", config, timeout=120
    )
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


# -- item 10: bounded memory ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("with_length", [False, True], ids=["chunked", "content-length"])
def test_an_answer_over_the_cap_fails_as_response_too_large(tmp_path, hostile, with_length):
    server = hostile(Hostile(huge_mb=50, huge_length=with_length))
    data = write_synthetic_dataset(tmp_path / "d.jsonl", 4, section_chars=60)
    out = tmp_path / "run"
    code = run_eval(data, server.base_url, out, "--max-response-mb", "1", "--judge-model", "j")
    assert code == 6  # finished, every pair failed
    summary = read_summary(out)
    assert summary["n_failed"] == 4
    assert summary["failures_by_class"] == {"response_too_large": 8}
    assert "larger than --max-response-mb 1 MB" in summary["failures"][0]["message"]
    # Not retried (final), not read to the end: the client closed each connection early.
    stats = server.stats()["hostile"]
    assert stats["huge_started"] == 8
    if not with_length:
        assert stats["huge_aborted"] == 8
    # Bytes on disk: nothing of the 400 MB offered.
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024
    # A final failure: a resume sends nothing again unless asked to.
    assert run_eval(data, server.base_url, out, "--resume") == 6
    assert server.stats()["hostile"]["huge_started"] == 8


@pytest.mark.slow
def test_an_error_body_is_read_only_as_far_as_its_message(tmp_path):
    """A 500 with 20 MB of body: the first 64 KiB give the message; the rest is not read."""

    async def main() -> tuple[CallFailure | Completion, int]:
        sent = 0

        async def handle(request: web.Request) -> web.StreamResponse:
            nonlocal sent
            resp = web.StreamResponse(status=500)
            await resp.prepare(request)
            try:
                for _ in range(20):
                    await resp.write(b"e" * 1024 * 1024)
                    sent += 1
            except (ConnectionError, RuntimeError):
                pass
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with HTTPClient(EndpointConfig(f"http://127.0.0.1:{port}/v1"), ChatWire()) as c:
                attempt = await c.attempt(b"{}")
            await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()
        return attempt.result, sent

    result, sent = asyncio.run(main())
    assert isinstance(result, CallFailure) and result.error_class is ErrorClass.TRANSIENT
    assert result.message.startswith("HTTP 500: eeee") and len(result.message) < 400
    assert sent < 20  # the server could not send it all: the client had closed


# -- item 11: a stopped process reads the answers that arrived ------------------------------


@pytest.mark.slow
def test_a_timer_that_fires_late_gives_the_answer_time_to_be_read(sim_server):
    """The client's event loop is frozen past the request's timeout while the server (in
    its own thread) answers: what a SIGSTOP does. The answer is read, not timed out."""
    server = sim_server(latency_median_ms=200, latency_sigma=0.01)
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Why?"}], "max_tokens": 50}
    )

    async def main() -> CallFailure | Completion:
        config = EndpointConfig(server.base_url, timeout_s=0.5)
        async with HTTPClient(config, ChatWire()) as client:
            task = asyncio.create_task(client.attempt(body))
            await asyncio.sleep(0.05)  # the request is out
            time.sleep(1.5)  # noqa: ASYNC251 - the loop must not run; the answer comes at 0.2 s
            return (await task).result

    result = asyncio.run(main())
    assert isinstance(result, Completion) and result.content


def test_a_deadline_that_fires_on_time_still_times_out():
    async def main() -> tuple[bool, float]:
        start = virtual_time.now()
        try:
            async with Deadline(0.1):
                await asyncio.sleep(5)
        except TimeoutError:
            return True, virtual_time.now() - start
        return False, virtual_time.now() - start

    # Virtual time (tests/virtual_time.py): the timer fires exactly on time, whatever the load.
    timed_out, took = virtual_time.run(main)
    assert timed_out and took == pytest.approx(0.1)


def test_a_deadline_whose_timer_fires_late_gives_the_answer_grace():
    """The loop did not run for a second (SIGSTOP, as far as the loop can tell): the timer
    that fires 0.9 s late grants GRACE_S more instead of cutting off an answer that is here."""

    async def main() -> tuple[bool, float, float]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(0.1)
        try:
            async with deadline:
                loop.clock.now += 1.0  # the process was stopped: the clock moved, nothing ran
                await asyncio.sleep(2.0)  # the answer is read within the grace
        except TimeoutError:
            return True, deadline.stalled_s, virtual_time.now()
        timed_out = False
        try:
            async with Deadline(0.1) as again:
                loop.clock.now += 1.0
                await asyncio.sleep(Deadline.GRACE_S + 1)  # longer than the grace: times out
        except TimeoutError:
            timed_out = True
        return timed_out, again.stalled_s, deadline.stalled_s

    timed_out, stalled_again, stalled_first = virtual_time.run(main)
    assert stalled_first == pytest.approx(0.9)
    assert timed_out and stalled_again == pytest.approx(0.9)


@pytest.mark.slow
def test_sigstop_longer_than_the_timeout_sends_nothing_twice(tmp_path, sim_process):
    n = 20
    data = write_synthetic_dataset(tmp_path / "d.jsonl", n, section_chars=60)
    server = sim_process("--latency-ms", "1000", "--latency-sigma", "0.01")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        evaluator_cmd(
            *run_args(data, server.base_url, out),
            *("--timeout", "3", "--concurrency", "40", "--judge-concurrency", "40"),
            *("--rpm", "100000", "--no-preflight"),
        ),
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while server.stats()["requests_total"] < 2 * n:  # every generation call is out
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(6)  # answers arrive after 1 s; the 3 s timeouts fall due meanwhile
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(120) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    stderr = proc.stderr.read().decode()
    summary = read_summary(out)
    assert summary["n_valid"] == n
    received = server.stats()["requests_total"]
    # Every request the server received is a call, or a re-send counted as possibly paid twice.
    assert received == 3 * n + summary["possibly_duplicated_calls"], stderr
    assert received == 3 * n  # and in fact none was sent twice: the answers were read
