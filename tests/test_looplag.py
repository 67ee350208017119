"""The event-loop lag monitor: a blocked loop shows up as lag, in constant memory."""

from __future__ import annotations

import asyncio
import time

from evaluator.looplag import BOUNDS_MS, LoopLagMonitor


def test_a_blocked_loop_is_measured():
    async def go():
        mon = LoopLagMonitor(interval_s=0.01)
        mon.start()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - block the loop on purpose
        await asyncio.sleep(0.05)
        await mon.stop()
        return mon

    mon = asyncio.run(go())
    assert mon.max_ms >= 150
    assert mon.quantile_ms(1.0) >= 150
    assert mon.quantile_ms(0.5) < 50
    assert len(mon.counts) == len(BOUNDS_MS) + 1  # fixed buckets, however many samples
    assert mon.summary()["event_loop_lag_samples"] == mon.samples > 5
