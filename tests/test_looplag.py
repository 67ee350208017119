"""The event-loop lag monitor: a blocked loop shows up as lag, in constant memory."""

from __future__ import annotations

import asyncio
import time

import pytest

from evaluator.looplag import BOUNDS_MS, LoopLagMonitor


@pytest.mark.slow  # blocks a real loop for 0.2 s; the fake-timer test below is the fast one
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
    # The timer pending when the loop blocked fired at least 0.2 s - 0.01 s late; a busy
    # machine only makes it later. (How quiet the other samples were depends on the
    # machine's load: that is tested with a fake timer below.)
    assert mon.max_ms >= 150
    assert mon.quantile_ms(1.0) >= 150
    assert len(mon.counts) == len(BOUNDS_MS) + 1  # fixed buckets, however many samples
    assert mon.summary()["event_loop_lag_samples"] == mon.samples >= 2


def test_lag_is_how_late_the_timer_fires_bucketed_in_constant_memory():
    """A fake timer that fires late by a scripted amount: every figure is exact."""
    now = [0.0]
    late_by_ms = [0.0] * 98 + [250.0, 40.0] + [0.0] * 900  # one stall, one hiccup
    fired = asyncio.Event()
    seen: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds + late_by_ms.pop(0) / 1000.0
        if not late_by_ms:
            fired.set()
            await asyncio.Event().wait()  # the script is done: wait to be stopped
        await asyncio.sleep(0)

    async def go() -> LoopLagMonitor:
        mon = LoopLagMonitor(
            interval_s=0.05, on_sample=seen.append, clock=lambda: now[0], sleep=fake_sleep
        )
        mon.start()
        await fired.wait()
        await mon.stop()
        return mon

    mon = asyncio.run(go())
    assert mon.samples == 999 and len(seen) == 999  # every sample also went to `on_sample`
    assert mon.max_ms == pytest.approx(250.0)
    assert seen[98] == pytest.approx(0.25) and seen[99] == pytest.approx(0.04)  # in seconds
    assert mon.quantile_ms(0.5) == BOUNDS_MS[0]  # a quiet loop: the lowest bucket
    assert mon.quantile_ms(1.0) == pytest.approx(251.1886, rel=1e-4)  # the bucket holding 250
    assert len(mon.counts) == len(BOUNDS_MS) + 1 and sum(mon.counts) == 999
    summary = mon.summary()
    assert summary["event_loop_lag_max_ms"] == 250.0
    assert summary["event_loop_lag_p50_ms"] == round(BOUNDS_MS[0], 3)
