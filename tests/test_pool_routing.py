"""The endpoint pool through its seams: fake endpoint clients, virtual time, no network.

Each test drives workers.pool.EndpointPool with tests/fakes.py's scripted clients on a
virtual-time loop (tests/virtual_time.py): a 30 s Retry-After or a minute of rate
pacing takes no real time, and the times asserted are exact.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests import virtual_time
from tests.fakes import (
    FakeClients,
    Step,
    fail,
    ok,
    rate_limited,
    scripted,
)
from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    RetryBudget,
    RetryWaitTooLong,
)
from workers.client import Attempt, EndpointConfig
from workers.follow_policy import FollowSettings
from workers.limits import RateLimitHeaders
from workers.pool import SLOW_START, EndpointPool, PoolConfig
from workers.server_aware import LoadFollower, ServerFollow
from workers.vllm_metrics import ServerLoad

A, B = "http://a.test/v1", "http://b.test/v1"
BODY = b'{"model": "m", "messages": []}'


def _pool(fakes: FakeClients, *urls: str, sleeps: list | None = None, **cfg):
    """A pool of fake endpoints on the running (virtual) loop's clock."""
    ep_fields = {k: cfg.pop(k) for k in ("concurrency", "rpm", "tpm") if k in cfg}
    endpoints = [EndpointConfig(u, model="m", **ep_fields) for u in urls or (A,)]
    sleep = virtual_time.recording_sleep(sleeps) if sleeps is not None else asyncio.sleep
    return EndpointPool(
        endpoints,
        PoolConfig(**cfg),
        clock=virtual_time.now,
        sleep=sleep,
        client_factory=fakes,
    )


async def _calls(pool: EndpointPool, n: int) -> list[Completion | CallFailure]:
    return list(await asyncio.gather(*(pool.chat(BODY) for _ in range(n))))


def test_least_outstanding_routing_favours_the_faster_endpoint():
    fakes = FakeClients(
        {
            A: scripted(then=Step(ok(), latency_s=0.002)),
            B: scripted(then=Step(ok(), latency_s=0.08)),
        }
    )

    async def go():
        async with _pool(fakes, A, B, concurrency=4) as pool:
            await pool.check()
            return await _calls(pool, 240)

    results = virtual_time.run(go)
    assert all(isinstance(r, Completion) for r in results)
    fast, slow = len(fakes[A].sent), len(fakes[B].sent)
    assert fast + slow == 240
    # The fast endpoint frees its slots 40 times as often: it takes nearly every call.
    assert fast > 10 * slow
    assert fakes[A].inflight_max <= 4 and fakes[B].inflight_max <= 4


def test_retry_after_pauses_only_that_endpoint():
    fakes = FakeClients(
        {
            A: scripted(then=Step(rate_limited(30.0), latency_s=0.001)),  # "come back in 30 s"
            B: scripted(then=Step(ok(), latency_s=0.01)),
        }
    )

    async def go():
        async with _pool(fakes, A, B, concurrency=4) as pool:
            await pool.check()
            start = virtual_time.now()
            results = await _calls(pool, 120)
            return results, virtual_time.now() - start, pool.endpoints[0].limits.paused_for

    results, took, a_paused_for = virtual_time.run(go)
    assert all(isinstance(r, Completion) for r in results)
    # Only the first wave (its 4 slots) reached the paused endpoint; the healthy one did the
    # rest without waiting out the pause: the run took 30 waves of 10 ms, not 30 s.
    assert len(fakes[A].sent) <= 4
    assert len(fakes[B].sent) == 120
    assert took == pytest.approx(0.3, abs=0.02)
    assert a_paused_for == pytest.approx(30.0 - took, abs=0.01)


def test_transient_errors_back_off_with_equal_jitter_then_succeed():
    error = fail(ErrorClass.TRANSIENT, 503)
    fakes = FakeClients({A: scripted(error, error, error)})
    waits: list[tuple[str, float]] = []

    async def go():
        async with _pool(fakes, sleeps=waits, backoff_base_s=1.0, backoff_max_s=3.0) as pool:
            await pool.check()
            return await pool.chat(BODY)

    result = virtual_time.run(go)
    sleeps = [s for task, s in waits if not task.endswith("-health")]  # the call's own waits
    assert isinstance(result, Completion) and result.attempts == 4
    # Backoff k waits between half and all of min(max, base * 2^(k-1)): 1, 2, then capped at 3.
    assert len(sleeps) == 3
    for wait, cap in zip(sleeps, (1.0, 2.0, 3.0), strict=True):
        assert cap / 2 <= wait <= cap
    sent_at = [t for t, _ in fakes[A].sent]
    assert [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)] == pytest.approx(sleeps)
    assert result.latency_s == pytest.approx(sum(sleeps))


def test_attempts_are_capped_and_rate_limit_answers_have_their_own_cap():
    fakes = FakeClients(
        {
            A: scripted(then=fail(ErrorClass.TRANSIENT, 500)),
            B: scripted(then=rate_limited(0.5)),
        }
    )

    async def go():
        async with _pool(fakes, A, max_attempts=3, backoff_base_s=0.1) as errors:
            await errors.check()
            failed = await errors.chat(BODY)
        async with _pool(fakes, B, max_attempts=3, max_rate_limited=5) as limited:
            await limited.check()
            paced = await limited.chat(BODY)
        return failed, paced

    failed, paced = virtual_time.run(go)
    assert isinstance(failed, CallFailure) and failed.error_class is ErrorClass.TRANSIENT
    assert failed.attempts == 3 and len(fakes[A].sent) == 3
    # 429s are pacing, not failures: five are waited through (not three), each 0.5 s apart.
    assert isinstance(paced, CallFailure) and paced.error_class is ErrorClass.RATE_LIMIT
    assert paced.attempts == 5 and len(fakes[B].sent) == 5
    sent_at = [t for t, _ in fakes[B].sent]
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert gaps == pytest.approx([0.5] * 4, abs=0.002)


def test_final_errors_are_sent_once_and_fatal_ones_stop_the_caller():
    fakes = FakeClients(
        {
            A: scripted(then=fail(ErrorClass.INVALID_REQUEST, 400)),
            B: scripted(then=fail(ErrorClass.FATAL, 401)),
        }
    )

    async def go():
        async with _pool(fakes, A) as pool:
            await pool.check()
            invalid = await pool.chat(BODY)
        async with _pool(fakes, B) as pool:
            await pool.check()
            with pytest.raises(FatalEndpointError) as raised:
                await pool.chat(BODY)
        return invalid, raised.value

    invalid, fatal = virtual_time.run(go)
    assert isinstance(invalid, CallFailure) and invalid.status == 400 and invalid.attempts == 1
    assert len(fakes[A].sent) == 1
    assert len(fakes[B].sent) == 1 and fatal.failure.status == 401


def test_intent_is_recorded_once_just_before_the_first_attempt_leaves():
    fakes = FakeClients({A: scripted(fail(ErrorClass.TRANSIENT, 502), rate_limited(1.0))})
    intents: list[int] = []  # how many attempts had left when each intent was recorded

    async def record_intent() -> None:
        intents.append(len(fakes[A].sent))

    async def go():
        async with _pool(fakes, backoff_base_s=0.1) as pool:
            await pool.check()
            return await pool.chat(BODY, before_send=record_intent)

    result = virtual_time.run(go)
    assert isinstance(result, Completion) and result.attempts == 3
    assert intents == [0]  # once, before anything was sent; retries are the same call


def test_the_run_wide_retry_budget_ends_retries_when_spent():
    fakes = FakeClients({A: scripted(then=fail(ErrorClass.TRANSIENT, 503))})

    async def go():
        async with _pool(fakes, retry_budget=RetryBudget(2), backoff_base_s=0.1) as pool:
            await pool.check()
            return await _calls(pool, 2)

    first, second = virtual_time.run(go)
    # Two retries for the whole pool: 2 first attempts + 2 retries, then both calls fail.
    assert len(fakes[A].sent) == 4
    assert all(isinstance(r, CallFailure) for r in (first, second))
    assert any("retry budget is spent" in r.message for r in (first, second))


def test_a_dead_endpoint_leaves_rotation_its_calls_move_and_it_returns_when_it_answers():
    fakes = FakeClients(
        {A: scripted(then=Step(ok(), latency_s=0.05)), B: scripted(then=Step(ok(), latency_s=0.05))}
    )

    async def go():
        async with _pool(fakes, A, B, concurrency=2, down_after=3, health_interval_s=2.0) as pool:
            await pool.check()
            fakes[A].up = False  # the server behind A dies: connection refused
            sent_before = len(fakes[A].sent)
            results = await _calls(pool, 20)
            a = pool.endpoints[0]
            out_of_rotation = not a.healthy
            refused = len(fakes[A].sent) - sent_before
            fakes[A].up = True  # it comes back; the health loop finds it within an interval
            await asyncio.sleep(2.5)
            back = a.healthy
            more = await _calls(pool, 20)
            return results, out_of_rotation, refused, back, more

    results, out_of_rotation, refused, back, more = virtual_time.run(go)
    assert all(isinstance(r, Completion) for r in results + more)
    assert out_of_rotation and refused == 3  # `down_after` refusals, then no more
    assert back
    assert len(fakes[A].sent) > 3  # in rotation again: it takes calls


def test_a_wait_longer_than_max_retry_wait_stops_instead_of_sleeping():
    fakes = FakeClients({A: scripted(rate_limited(86_400.0))})

    async def go():
        async with _pool(fakes, max_retry_wait_s=300.0) as pool:
            await pool.check()
            start = virtual_time.now()
            with pytest.raises(RetryWaitTooLong) as raised:
                await pool.chat(BODY)
            return raised.value, virtual_time.now() - start

    stop, took = virtual_time.run(go)
    assert took == 0.0  # stopped at once: not a second of the day was waited
    assert stop.wait_s == 86_400.0 and "longer than --max-retry-wait 300s" in stop.failure.message
    assert len(fakes[A].sent) == 1


def test_calls_fail_resumably_once_no_endpoint_answered_for_the_all_down_timeout():
    fakes = FakeClients()

    async def go():
        async with _pool(fakes, all_down_timeout_s=600.0, health_interval_s=2.0) as pool:
            await pool.check()
            fakes[A].up = False
            start = virtual_time.now()
            result = await pool.chat(BODY)
            return result, virtual_time.now() - start

    result, took = virtual_time.run(go)
    assert isinstance(result, CallFailure) and result.error_class is ErrorClass.TRANSIENT
    assert "has answered for 600s" in result.message
    # Three refusals with backoff (at most 1 + 2 + 4 s) took it out of rotation; then it
    # waited out the timeout, checking every second, and gave up.
    assert 600.0 < took <= 608.0


def test_rpm_paces_requests_across_the_minute():
    fakes = FakeClients()

    async def go():
        async with _pool(fakes, rpm=1200, concurrency=64) as pool:  # 20 a second
            await pool.check()
            return await _calls(pool, 60)

    results = virtual_time.run(go)
    assert all(isinstance(r, Completion) for r in results)
    sent_at = sorted(t for t, _ in fakes[A].sent)
    # A bucket of 20 a second: the first 20 at once, then one every 1/20 s as it refills.
    assert sent_at[19] == sent_at[0]
    for k in range(40):
        assert sent_at[20 + k] - sent_at[0] >= (k + 1) / 20 - 1e-6
    assert sent_at[-1] - sent_at[0] == pytest.approx(2.0, abs=0.05)


def test_rate_limit_headers_retune_the_bucket_and_pause_until_a_request_refills():
    headers = RateLimitHeaders(limit_requests=600.0, remaining_requests=0.0, reset_requests_s=20.0)
    fakes = FakeClients({A: scripted(Attempt(Completion("x"), limits=headers))})

    async def go():
        async with _pool(fakes, concurrency=4) as pool:
            await pool.check()
            await pool.chat(BODY)
            limits = pool.endpoints[0].limits
            paused, rpm = limits.paused_for, limits.rpm
            await pool.chat(BODY)
            return paused, rpm

    paused, rpm = virtual_time.run(go)
    assert rpm == 600.0
    assert paused == pytest.approx(0.1)  # one request's refill at 600/min, not the 20 s reset
    first, second = (t for t, _ in fakes[A].sent)
    assert second - first == pytest.approx(0.1, abs=0.002)


def test_unknown_limits_start_slow_and_a_429_cuts_the_limit():
    fakes = FakeClients(
        {A: scripted(*[Step(ok(), latency_s=1.0)] * 40, rate_limited(1.0), then=ok())}
    )

    async def go():
        async with _pool(fakes, concurrency=64) as pool:
            await pool.check()
            c = pool.endpoints[0].concurrency
            await _calls(pool, 40)
            grown = c.limit
            last = await pool.chat(BODY)  # told 429 once, then answered
            return grown, c.limit, c.cuts, last

    grown, cut, cuts, last = virtual_time.run(go)
    sent_at = [t for t, _ in fakes[A].sent]
    assert sent_at.count(virtual_time.START) == SLOW_START  # the first wave: 8, not 40
    assert fakes[A].inflight_max > SLOW_START  # every success while saturated added a slot
    assert grown > SLOW_START
    assert last.attempts == 2 and cut == pytest.approx(grown * 0.7) and cuts == 1


def test_waits_are_logged_at_most_once_per_interval_with_a_count(caplog):
    from workers.waits import WaitLog

    t = [0.0]
    waits = WaitLog("model endpoint", clock=lambda: t[0])
    with caplog.at_level(logging.INFO, logger="evaluator"):
        waits.note(A, 1.0, "retry after 503")
        for _ in range(5):
            t[0] += 1.0
            waits.note(A, 1.5, "retry after 503")  # within 30 s, not much longer: held
        t[0] += 30.0
        waits.note(A, 1.0, "retry after 503")
        waits.note(A, 90.0, "HTTP 429, asked by the server")  # much longer: shown at once
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 3
    assert "5 more wait(s) since the last line, the longest 1.5s" in lines[1][1]
    assert lines[2][0] == logging.WARNING and "waiting 90.0s" in lines[2][1]


# -- server-aware following, reading by reading (workers.server_aware) ---------------------


def _follower(settings: FollowSettings, clock):
    fakes = FakeClients()
    pool = EndpointPool(
        [EndpointConfig(A, model="m", concurrency=settings.ceiling)],
        PoolConfig(),
        clock=clock,
        client_factory=fakes,
    )
    woken: list[int] = []
    follower = LoadFollower(pool, settings, woken.append, lambda: True, clock)
    ep = pool.endpoints[0]
    follow = ServerFollow(ep, "http://a.test/metrics", settings)
    ep.concurrency.follow(settings.start)
    ep.follow = follow
    follower.follows.append(follow)
    return follower, follow, ep, woken


def test_following_doubles_with_room_then_cuts_a_queue_seen_twice():
    settings = FollowSettings(start=16, ceiling=256)
    follower, follow, ep, woken = _follower(settings, clock=lambda: 0.0)
    ep.concurrency.inflight = 16
    follower.poll_result(follow, ServerLoad(16, 0, kv_usage=0.2, at=1.0), True, True)
    assert ep.concurrency.limit == 32 and follow.decision == "raise" and woken == [16]
    ep.concurrency.inflight = 32
    follower.poll_result(follow, ServerLoad(32, 0, kv_usage=0.3, at=2.0), True, True)
    assert ep.concurrency.limit == 64
    ep.concurrency.inflight = 64
    queue = ServerLoad(40, 24, kv_usage=0.5, at=3.0)  # 24 waiting: more than max(4, 10% of 40)
    follower.poll_result(follow, queue, True, True)
    assert ep.concurrency.limit == 64 and follow.decision == "hold (queue seen once)"
    follower.poll_result(follow, ServerLoad(40, 24, kv_usage=0.5, at=4.0), True, True)
    assert follow.decision == "lower (queue)"
    assert ep.concurrency.limit == pytest.approx(64 - (24 - 2))  # all 64 of 64 calls are ours
    assert follow.capacity == 40 and not follow.probing
    assert len(woken) == 2  # only the raises woke waiting calls


def test_following_falls_back_when_metrics_vanish_or_stay_unreachable(caplog):
    settings = FollowSettings(start=16, ceiling=256, fallback=32, vanish_after=3, unreachable_s=30)
    t = [100.0]
    follower, follow, ep, _ = _follower(settings, clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="evaluator"):
        follower.poll_result(follow, None, True, True)
        follower.poll_result(follow, None, True, True)
        assert follow.active and ep.concurrency.follows_server  # two misses: still following
        follower.poll_result(follow, None, True, True)
    assert not follow.active and not ep.concurrency.follows_server
    assert ep.concurrency.maximum == 32 and "3 readings in a row" in follow.decision
    assert len(caplog.records) == 1

    follower, follow, ep, _ = _follower(settings, clock=lambda: t[0])
    follower.poll_result(follow, None, False, True)  # unreachable from t = 100
    t[0] += 29.0
    ep.stats.ok += 5  # its calls still succeed
    follower.poll_result(follow, None, False, True)
    assert follow.active  # 29 s: not yet
    t[0] += 1.0
    follower.poll_result(follow, None, False, True)
    assert not follow.active and "unreachable for 30s while its calls succeed" in follow.decision
