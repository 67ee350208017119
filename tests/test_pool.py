"""Limits and endpoint pools: the AIMD controller, token budget, header re-tuning, routing, requeue."""

from __future__ import annotations

import time

import pytest

from tests.conftest import read_summary, run_eval, spawn_run
from workers.limits import (
    AdaptiveConcurrency,
    EndpointLimits,
    RateLimitHeaders,
    TokenBudget,
    per_minute_bucket,
)
from workers.openai_compat import _duration_seconds


def test_aimd_cuts_once_per_episode_and_grows_back_when_saturated():
    c = AdaptiveConcurrency(maximum=10, decrease=0.5, cooldown_s=1.0)
    c.on_rate_limited(now=100.0)
    c.on_rate_limited(now=100.5)  # same episode: no second cut
    assert c.limit == 5.0 and c.cuts == 1
    c.on_rate_limited(now=101.6)
    assert c.limit == 2.5 and c.cuts == 2
    c.inflight = 0  # not saturated (limit 2, the finished call already released): no growth
    c.on_success()
    assert c.limit == 2.5
    for _ in range(200):
        c.inflight = int(c.limit) - 1  # every other slot busy: additive increase to the maximum
        c.on_success()
    assert c.limit == 10.0


def test_token_budget_counts_max_tokens_and_calibrates_the_prompt_estimate():
    b = TokenBudget(tpm=60_000, largest=5_000)
    assert b.estimate(4_000, 1_000) == 2_000  # 4 bytes a token to start with
    for _ in range(100):
        b.calibrate(4_000, 500)  # the provider counts 8 bytes a token here
    assert abs(b.estimate(4_000, 1_000) - 1_500) < 5


def test_per_minute_bucket_window_holds_the_largest_request():
    bucket = per_minute_bucket(600)  # 10 requests a second
    assert bucket.max_rate == 10 and bucket.time_period == 1
    tokens = per_minute_bucket(60_000, largest=6_000)  # 1,000/s but one call needs 6,000
    assert tokens.max_rate >= 6_000


def test_headers_retune_and_pause():
    limits = EndpointLimits(rpm=1_000, clock=lambda: 100.0)  # time stands still: exact pauses
    h = RateLimitHeaders.parse(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "20s",
            "x-ratelimit-limit-tokens": "90000",
        },
        _duration_seconds,
    )
    limits.observe(h)
    assert limits.rpm == 600 and limits.tpm == 90_000 and limits.retunes == 2
    # Empty window: pause for one request's refill (0.1 s at 600/min), not the full 20 s reset.
    assert limits.paused_for == pytest.approx(0.1)
    assert limits.paused_until == pytest.approx(100.1)


def _more_urls(*urls) -> list[str]:
    """`--base-url` flags for endpoints after the first."""
    return [flag for u in urls for flag in ("--base-url", u)]


def _run(out, data, url, *more_urls, extra=()):
    return run_eval(data, url, out, *_more_urls(*more_urls), "--backoff-base", "0.05", *extra)


def _limited_run(tmp_path, synthetic, sim_server, name, *flags):
    data = synthetic(60)  # 180 calls
    # 50 requests and 150,000 tokens a second (a generation counts ~4,300 with max_tokens).
    server = sim_server(rpm_limit=3_000, tpm_limit=9_000_000)
    out = tmp_path / name
    caps = ("--concurrency", "16", "--judge-concurrency", "16")
    # The simulated server has one allowance whatever the model; the evaluator keeps a
    # bucket per model, so both stages name one model here to draw on one bucket.
    same = ("--judge-model", "m")
    assert _run(out, data, server.base_url, extra=(*caps, *same, *flags)) == 0
    assert read_summary(out)["n_valid"] == 60
    stats = server.stats()["by_kind"]
    assert stats.get("model", 0) + stats.get("judge", 0) == 180 + 1  # + the judge's test call
    return stats.get("model_429", 0) + stats.get("judge_429", 0)


@pytest.mark.slow
def test_limits_learned_from_headers_end_the_429s_after_the_first_wave(
    tmp_path, synthetic, sim_server
):
    # No limits given: only the first wave (before any x-ratelimit header came back,
    # at most the 16 + 16 slots) can be refused; after that the client paces itself.
    assert _limited_run(tmp_path, synthetic, sim_server, "learned") <= 32 + 9


@pytest.mark.slow
def test_known_limits_give_no_429_storm(tmp_path, synthetic, sim_server):
    limited = _limited_run(
        tmp_path, synthetic, sim_server, "known", "--rpm", "3000", "--tpm", "9000000"
    )
    assert limited <= 9  # under 5% of 180


@pytest.mark.slow
def test_least_outstanding_routing_favours_the_faster_server(tmp_path, synthetic, sim_server):
    data = synthetic(80)
    fast = sim_server(latency_median_ms=2, latency_sigma=0.1)
    slow = sim_server(latency_median_ms=80, latency_sigma=0.1)
    out = tmp_path / "run"
    assert (
        _run(
            out,
            data,
            fast.base_url,
            slow.base_url,
            extra=("--concurrency", "4", "--judge-concurrency", "4"),
        )
        == 0
    )
    assert read_summary(out)["n_valid"] == 80
    served_fast = fast.stats()["requests_total"]
    served_slow = slow.stats()["requests_total"]
    assert served_fast + served_slow == 240 + 1  # + the judge's preflight test call
    assert served_fast > 2 * served_slow


@pytest.mark.slow
def test_retry_after_pauses_only_that_endpoint(tmp_path, synthetic, sim_server):
    data = synthetic(40)
    limited = sim_server(rate_429=1.0, retry_after_s=30.0)  # always "come back in 30 s"
    healthy = sim_server()
    out = tmp_path / "run"
    # Nobody may wait out the 30 s pause: were every endpoint paused (the pause not kept to
    # the endpoint that asked for it), a call would have to wait 30 s > --max-retry-wait 20
    # and the run would stop with exit 9 instead of finishing. (Virtual-time version:
    # tests/test_pool_routing.py.)
    caps = ("--concurrency", "4", "--judge-concurrency", "4", "--max-retry-wait", "20")
    assert _run(out, data, limited.base_url, healthy.base_url, extra=caps) == 0
    assert read_summary(out)["n_valid"] == 40
    # Only the first wave (at most its 4 + 4 slots) reached the limited endpoint; once it
    # said "wait", it was left alone while the other endpoint did the work.
    # (+ the judge's preflight test call, which is not repeated when told to wait 30 s)
    assert limited.stats()["requests_total"] <= 8 + 1
    assert healthy.stats()["requests_total"] >= 120


@pytest.mark.slow
def test_a_server_killed_mid_run_is_drained_and_requeued(
    tmp_path, synthetic, sim_server, sim_process
):
    data = synthetic(300)
    doomed = sim_process("--dataset", str(data), "--latency-ms", "30")
    a = sim_server(latency_median_ms=30)
    b = sim_server(latency_median_ms=30)
    out = tmp_path / "run"
    caps = ("--concurrency", "8", "--judge-concurrency", "8")
    proc = spawn_run(data, doomed.base_url, out, *_more_urls(a.base_url, b.base_url), *caps)
    try:
        deadline = time.monotonic() + 30
        while doomed.stats()["requests_total"] < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen_by_doomed = set(doomed.stats(bodies=True)["bodies"])
        doomed.proc.kill()
        doomed.proc.wait(10)
        assert proc.wait(120) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == 300 and s["n_failed"] == 0
    assert s["possibly_duplicated_calls"] == 0
    # Every call the dead server had not received was sent to the others; only calls it
    # received in the instant between that snapshot and the kill (at most its 8 + 8
    # slots) can be missing from both sets.
    survivors = a.stats(bodies=True)["bodies"].keys() | b.stats(bodies=True)["bodies"].keys()
    assert len(survivors | seen_by_doomed) >= 900 - 16


def test_slow_start_doubles_each_round_until_the_first_rate_limit():
    c = AdaptiveConcurrency(maximum=64, initial=8)
    assert c.limit == 8 and c.slow_start
    for _ in range(8):  # one round of 8 successes while saturated: 16
        c.inflight = int(c.limit) - 1
        c.on_success()
    assert c.limit == 16
    c.on_rate_limited(now=10.0)
    assert not c.slow_start and c.limit == 16 * 0.7
    before = c.limit
    c.inflight = int(c.limit) - 1
    c.on_success()
    assert c.limit - before < 0.1  # back to additive increase


KEY = "sk-one-account-0123456789"


def _stage_rpm(out) -> dict[str, list]:
    endpoints = read_summary(out)["last_session"]["endpoints"]
    return {stage: [(ep["rpm"], ep["tpm"]) for ep in eps] for stage, eps in endpoints.items()}


@pytest.mark.slow
def test_model_and_judge_on_one_account_get_a_bucket_each(
    tmp_path, synthetic, sim_server, monkeypatch, caplog
):
    """One URL and key, two model names: each stage has its own rate buckets (providers
    limit each model apart), so --judge-rpm/--judge-tpm apply to the judge."""
    server = sim_server(api_key=KEY)
    monkeypatch.setenv("ONE_ACCOUNT_KEY", KEY)
    out = tmp_path / "run"
    flags = ("--api-key-env", "ONE_ACCOUNT_KEY", "--judge-model", "judge-b")
    limits = ("--rpm", "6000", "--tpm", "9000000", "--judge-rpm", "3000", "--judge-tpm", "4500000")
    assert run_eval(synthetic(6), server.base_url, out, *flags, *limits, model="model-a") == 0
    assert _stage_rpm(out) == {"generation": [(6000, 9_000_000)], "judge": [(3000, 4_500_000)]}
    assert "share one rate-limit bucket" not in caplog.text


@pytest.mark.slow
def test_one_model_for_both_stages_shares_its_bucket_and_says_so(
    tmp_path, synthetic, sim_server, caplog
):
    server = sim_server()
    out = tmp_path / "run"
    limits = ("--rpm", "6000", "--judge-rpm", "3000", "--judge-model", "same")
    assert run_eval(synthetic(6), server.base_url, out, *limits, model="same") == 0
    # One allowance for one model on one account: the judge draws on the model's bucket.
    assert _stage_rpm(out) == {"generation": [(6000, None)], "judge": [(6000, None)]}
    warnings = [r.getMessage() for r in caplog.records if "share one rate-limit" in r.getMessage()]
    assert len(warnings) == 1
    assert "model endpoint and judge endpoint send model 'same'" in warnings[0]
    assert "the limits given for judge endpoint (rpm 3000.0, tpm None) do not apply" in warnings[0]


def test_limits_registry_is_keyed_by_url_key_and_model():
    from workers.client import EndpointConfig
    from workers.pool import EndpointPool, PoolConfig

    registry: dict = {}
    url = "http://127.0.0.1:9/v1"

    def pool(name: str, model: str, key: str = KEY, rpm: float = 600.0) -> EndpointPool:
        ep = EndpointConfig(url, api_key=key, model=model, rpm=rpm)
        return EndpointPool([ep], PoolConfig(name=name), registry)

    gen = pool("model endpoint", "a")
    assert pool("judge endpoint", "b", rpm=60.0).endpoints[0].limits is not gen.endpoints[0].limits
    assert pool("judge endpoint", "a").endpoints[0].limits is gen.endpoints[0].limits
    assert pool("other key", "a", key="sk-another-0123456789").endpoints[0].limits is not (
        gen.endpoints[0].limits
    )
    judge_b = registry[(url, KEY, "b")][0]
    assert judge_b.rpm == 60.0 and judge_b.bucket("requests").max_rate == 1.0  # 60/min
