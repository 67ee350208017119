"""The provider-style rate limits of the simulated server (`--rpm-limit`, `--tpm-limit`):
request and token buckets enforced with 429s and announced in each format's headers."""

from __future__ import annotations

import time

from workers.simulated import wire


class ProviderLimits:
    """Continuously refilled request and token buckets, as hosted APIs describe theirs.

    Like the big providers, a per-minute limit is enforced over a short window
    (one second by default): the bucket holds one second's share, so a client
    cannot spend the whole minute in a burst.
    """

    def __init__(self, rpm: float | None, tpm: float | None, window_s: float = 1.0) -> None:
        self.buckets = {
            # name: [per-minute limit, capacity, level, last refill]
            name: [limit, limit * window_s / 60.0, limit * window_s / 60.0, time.monotonic()]
            for name, limit in (("requests", rpm), ("tokens", tpm))
            if limit
        }

    def _refill(self) -> None:
        now = time.monotonic()
        for b in self.buckets.values():
            limit, capacity, level, last = b
            b[2] = min(capacity, level + (now - last) * limit / 60.0)
            b[3] = now

    def admit(self, tokens: int) -> float | None:
        """None if the request fits (and is charged); else the seconds to wait."""
        self._refill()
        need = {"requests": 1, "tokens": tokens}
        short = {n: need[n] - b[2] for n, b in self.buckets.items() if b[2] < need[n]}
        if short:
            return max(s * 60.0 / self.buckets[n][0] for n, s in short.items())
        for n, b in self.buckets.items():
            b[2] -= need[n]
        return None

    def headers(self, kind: str = "chat") -> dict[str, str]:
        return wire.limit_headers(kind, self.buckets)
