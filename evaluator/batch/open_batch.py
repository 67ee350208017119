"""The open batch: the calls waiting to go out together, and when they go.

The open batch is closed and submitted when it reaches the provider's limit
(requests or bytes, or the lower limits of the run config), when no new call has
arrived for `idle_s` (the stage has nothing else coming: generation is done or
every pair admitted waits on this stage), or when its first call has waited
`window_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from evaluator.batch.settings import BatchSettings

LINE_OVERHEAD = 160  # bytes a request's line adds to its body (custom_id, url, JSON framing)


class OpenBatch:
    """Collects (call key, body) items; hands each closed batch to `submit` (which must not
    block: the stage starts a task for it)."""

    def __init__(
        self, settings: BatchSettings, submit: Callable[[list[tuple[str, bytes]]], None]
    ) -> None:
        self.settings = settings
        self._submit = submit
        self._items: list[tuple[str, bytes]] = []
        self._bytes = 0
        self._since = 0.0
        self._last_add = 0.0
        self._wake = asyncio.Event()

    def add(self, key: str, body: bytes) -> None:
        size = len(body) + LINE_OVERHEAD
        if self._items and self._bytes + size > self.settings.max_bytes:
            self.flush()
        now = time.monotonic()
        if not self._items:
            self._since = now
            self._wake.set()
        self._items.append((key, body))
        self._bytes += size
        self._last_add = now
        if len(self._items) >= self.settings.max_requests:
            self.flush()

    def flush(self) -> None:
        items, self._items, self._bytes = self._items, [], 0
        if items:
            self._submit(items)

    async def run(self) -> None:
        """Submit the open batch when its window or idle time is up (until cancelled)."""
        s = self.settings
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = min(self._since + s.window_s, self._last_add + s.idle_s)
            wait = due - time.monotonic()
            if wait <= 0:
                self.flush()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
