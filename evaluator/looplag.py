"""Event-loop lag: how late a timer fires is how long the loop was too busy to run anything.

A high lag means every in-flight call's response waits in a socket buffer that
long, so it is the first number to look at when the client, not the endpoint,
is the bottleneck. Samples go into fixed log-spaced buckets: constant memory.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Awaitable, Callable

from workers.base import cancel_and_wait

# Upper bounds in milliseconds: 0.1 ms to ~100 s, 10 buckets per decade.
BOUNDS_MS = [0.1 * 10 ** (i / 10) for i in range(61)]


class LoopLagMonitor:
    def __init__(
        self,
        interval_s: float = 0.05,
        on_sample: Callable[[float], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`on_sample(seconds)` receives each measurement (e.g. a Prometheus gauge's set).
        `clock`, `sleep`: the timer being measured (tests inject a fake one)."""
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._on_sample = on_sample
        self.counts = [0] * (len(BOUNDS_MS) + 1)
        self.samples = 0
        self.max_ms = 0.0
        self.last_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def record(self, lag_ms: float) -> None:
        self.samples += 1
        self.last_ms = lag_ms
        self.max_ms = max(self.max_ms, lag_ms)
        self.counts[bisect.bisect_left(BOUNDS_MS, lag_ms)] += 1
        if self._on_sample is not None:
            self._on_sample(lag_ms / 1000.0)

    def quantile_ms(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None before any sample)."""
        if not self.samples:
            return None
        rank = math.ceil(q * self.samples)
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return BOUNDS_MS[i] if i < len(BOUNDS_MS) else self.max_ms
        return self.max_ms

    async def _run(self) -> None:
        while True:
            start = self._clock()
            await self._sleep(self.interval_s)
            self.record(max(0.0, (self._clock() - start - self.interval_s) * 1000.0))

    def summary(self) -> dict[str, float | int | None]:
        p50, p99 = self.quantile_ms(0.5), self.quantile_ms(0.99)
        return {
            "event_loop_lag_p50_ms": None if p50 is None else round(p50, 3),
            "event_loop_lag_p99_ms": None if p99 is None else round(p99, 3),
            "event_loop_lag_max_ms": round(self.max_ms, 3),
            "event_loop_lag_samples": self.samples,
        }
