"""An asyncio event loop whose clock is virtual: waiting takes no real time.

When every task is waiting and the next thing due is a timer (a sleep, a
`wait_for` timeout, aiolimiter's refill, a Retry-After pause), the loop's
clock jumps to that timer instead of blocking: a test of a 30 s pause or a
10-minute backoff runs in microseconds, and what it asserts about time is
exact, whatever the machine's load.

The one thing the clock must not skip is work in threads (the store writer
commits through `asyncio.to_thread`): the loop's default executor counts the
jobs it runs, and while one is running the loop waits for real, as any loop
would, so a commit is never overtaken by a timer that only looked due.

Code under test reads the same clock through its `clock` seam
(`clock=loop.time`). Written here rather than taken from a library: the
plugins that fake loop time (looptime, aiotools' VirtualClock) either need
pytest-asyncio or do not wait for executor threads, and this is short.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock
from typing import Any, TypeVar

T = TypeVar("T")

START = 1_000.0  # far from 0, so "-1e9 = long ago" defaults stay long ago


class _CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the jobs not yet finished."""

    def __init__(self) -> None:
        super().__init__(max_workers=4, thread_name_prefix="virtual-time")
        self._lock = Lock()
        self.busy = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            self.busy += 1
        fut = super().submit(fn, *args, **kwargs)
        # Added before asyncio chains its own callback, so the count drops before the
        # loop is woken for the result.
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _: Future) -> None:
        with self._lock:
            self.busy -= 1


class _VirtualSelector(selectors.DefaultSelector):
    """Real I/O readiness (the loop's self-pipe, sockets) without ever blocking on a timer."""

    def __init__(self, clock: VirtualClock, executor: _CountingExecutor) -> None:
        super().__init__()
        self._clock = clock
        self._executor = executor
        self.loop: asyncio.AbstractEventLoop | None = None

    def select(self, timeout: float | None = None):
        events = super().select(0)
        if events:
            return events
        if timeout == 0:
            if not getattr(self.loop, "_ready", True):
                # Nothing to run, only a timer due "now": a real clock would have moved on a
                # little. Without this, a timer set a rounding error ahead (aiolimiter's
                # refill) would fire at the same instant forever.
                self._clock.now = math.nextafter(self._clock.now, math.inf)
            return events
        if timeout is None or self._executor.busy:
            # Nothing is due by time: only I/O or a thread can wake the loop. Wait for real
            # (a test that hangs here is stopped by pytest-timeout).
            return super().select(None if timeout is None else 0.05)
        # Idle until the next timer: jump to it (at least one step, see above).
        self._clock.now = max(self._clock.now + timeout, math.nextafter(self._clock.now, math.inf))
        return []


class VirtualClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a VirtualClock (see the module docstring)."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        executor = _CountingExecutor()
        selector = _VirtualSelector(self.clock, executor)
        super().__init__(selector=selector)
        selector.loop = self  # its ready queue tells "a timer is due" from "work is ready"
        self.set_default_executor(executor)

    def time(self) -> float:
        return self.clock.now


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` on a fresh virtual-time loop (as asyncio.run does with a real one)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def now() -> float:
    """The running loop's time: the `clock` to give code under test."""
    return asyncio.get_running_loop().time()


async def sleep_recorded(log: list[tuple[str, float]], seconds: float) -> None:
    """A `sleep` seam that notes (the waiting task's name, seconds), then waits (virtual)."""
    task = asyncio.current_task()
    log.append((task.get_name() if task is not None else "", seconds))
    await asyncio.sleep(seconds)


def recording_sleep(log: list[tuple[str, float]]) -> Callable[[float], Awaitable[None]]:
    return lambda seconds: sleep_recorded(log, seconds)
