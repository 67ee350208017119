"""Retrying: one backoff formula and one loop, for everything that retries (the pool's
calls, the Batch API's HTTP exchanges, the start-up test call).

The loop is small on purpose: what to do after a failure (how long the provider asked us
to wait, rate limits counted apart from errors, the run's retry budget, another endpoint
to try at once) is each caller's policy, given as a function; the loop only repeats,
waits, and stops. A retry library would take the same policy as callbacks around the
same code, so none is used.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_s(attempt: int, base_s: float, max_s: float = math.inf) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): exponential from
    `base_s`, capped at `max_s`, with "equal jitter": half of it fixed, so it is never
    zero, half random, so callers that failed together do not come back together
    (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015)."""
    cap = min(max_s, base_s * 2 ** (attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)


async def retry(
    attempt: Callable[[int], Awaitable[T]],
    wait_after: Callable[[int, T], float | None],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`attempt(n)` for n = 1, 2, ... until `wait_after(n, result)` says None: then its
    result is returned. Otherwise wait that many seconds (0: go again at once) first.
    Exceptions from either function end the loop: they are final by the caller's rules."""
    n = 0
    while True:
        n += 1
        result = await attempt(n)
        wait = wait_after(n, result)
        if wait is None:
            return result
        if wait > 0:
            await sleep(wait)
