"""The pool's wait log: one line per wait a run makes, thinned so a storm of 429s stays
readable (used by workers.pool)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("evaluator")

__all__ = ["WaitLog"]


class WaitLog:
    """One line per wait the run makes, at most one per endpoint every INTERVAL_S seconds
    (a storm of 429s is thousands of waits): the lines between are counted into the next
    one. A wait much longer than the last one shown is shown at once. Waits of a minute
    or more are warnings; shorter ones are pacing, logged at info level."""

    INTERVAL_S = 30.0

    def __init__(self, pool: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self._clock = clock
        self._shown: dict[str, tuple[float, float]] = {}  # endpoint -> (when, the wait shown)
        self._held: dict[str, tuple[int, float]] = {}  # endpoint -> (waits not shown, longest)

    def note(self, endpoint: str, seconds: float, why: str) -> None:
        now = self._clock()
        when, shown = self._shown.get(endpoint, (-1e18, 0.0))
        count, longest = self._held.get(endpoint, (0, 0.0))
        if now - when < self.INTERVAL_S and seconds <= 2 * max(shown, 1.0):
            self._held[endpoint] = (count + 1, max(longest, seconds))
            return
        self._shown[endpoint] = (now, seconds)
        self._held.pop(endpoint, None)
        more = (
            f"; {count} more wait(s) since the last line, the longest {longest:.1f}s"
            if count
            else ""
        )
        long_wait = seconds >= 60.0
        log.log(
            logging.WARNING if long_wait else logging.INFO,
            "%s: waiting %s for %s (%s)%s",
            self.pool,
            "without end" if seconds == float("inf") else f"{seconds:.1f}s",
            endpoint,
            why,
            more,
        )
