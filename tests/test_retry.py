"""workers.retry: the one backoff formula and the one retry loop (injected sleep: no waiting)."""

from __future__ import annotations

import asyncio
import random

import pytest

from workers.retry import backoff_s, retry


def test_backoff_is_exponential_capped_and_never_zero() -> None:
    random.seed(1)
    for attempt in range(1, 12):
        cap = min(60.0, 1.0 * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(cap / 2 <= w <= cap for w in waits)
        assert len(set(waits)) > 100  # jittered: callers that failed together spread out
    assert backoff_s(30, 0.5) >= 0.5 * 2**29 / 2  # no cap unless one is given


def test_retry_repeats_waits_and_stops_as_the_policy_says() -> None:
    slept: list[float] = []
    seen: list[tuple[int, str]] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def attempt(n: int) -> str:
        return "ok" if n == 4 else f"fail {n}"

    def wait_after(n: int, result: str) -> float | None:
        seen.append((n, result))
        return None if result == "ok" else [2.0, 0.0, 3.5][n - 1]

    assert asyncio.run(retry(attempt, wait_after, sleep=sleep)) == "ok"
    assert seen == [(1, "fail 1"), (2, "fail 2"), (3, "fail 3"), (4, "ok")]
    assert slept == [2.0, 3.5]  # a wait of 0 goes again at once


def test_retry_returns_the_last_result_when_told_to_stop_and_lets_errors_out() -> None:
    async def sleep(s: float) -> None:
        raise AssertionError("no wait expected")

    async def failing(n: int) -> str:
        return f"fail {n}"

    assert asyncio.run(retry(failing, lambda n, r: None, sleep=sleep)) == "fail 1"

    async def fatal(n: int) -> str:
        raise PermissionError("bad key")

    with pytest.raises(PermissionError):
        asyncio.run(retry(fatal, lambda n, r: 0.0, sleep=sleep))
