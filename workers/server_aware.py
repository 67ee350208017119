"""Server-aware concurrency: an endpoint's in-flight limit that follows its vLLM server's load.

A continuous-batching server (vLLM) runs as many sequences at once as its batch
and KV cache hold; what it cannot run yet waits in its queue. Too few requests
in flight and the GPU idles; far too many and requests wait in that queue until
they time out. vLLM never answers 429, so the AIMD limit of workers.limits
never learns this. vLLM does publish it (workers.vllm_metrics), and for an
endpoint that does, a poller reads `/metrics` every `interval_s` and sets the
endpoint's limit.

The decision itself (raise, hold or lower, and when a reading is trusted) is
workers.follow_policy's `decide`; this module polls the servers and applies it.

An endpoint whose server does not publish the metrics at start keeps the fixed
cap and AIMD (`fallback`). One whose metrics vanish during the run (answered,
but no vLLM metrics, `vanish_after` readings in a row; or unreachable for
`unreachable_s` while its calls still succeed) goes back to them too, with one
warning, and is not polled again in that session.

`LoadFollower` owns the poller task and its HTTP session; `EndpointPool`
starts it after its start-up check and closes it on exit, on every path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from workers.base import cancel_and_wait
from workers.follow_policy import FollowSettings, batch_full, decide, long_queue
from workers.transport import tls_context
from workers.vllm_metrics import ServerLoad, metrics_url, parse_load

if TYPE_CHECKING:
    from workers.endpoint import Endpoint
    from workers.pool import EndpointPool

log = logging.getLogger("evaluator")

__all__ = ["LoadFollower", "ServerFollow"]


class ServerFollow:
    """One endpoint following its server: the last reading, the last decision, and the
    state that outlives a reading (probing, the server's capacity, the last reading's
    kind, missing readings, latency cuts)."""

    def __init__(self, ep: Endpoint, url: str, settings: FollowSettings) -> None:
        self.ep = ep
        self.url = url
        self.settings = settings
        self.active = True
        self.load: ServerLoad | None = None
        self.decision = "start"
        self.probing = True
        self.peak_limit = float(settings.start)
        self.capacity = 0.0  # what the server ran when it last showed it was full
        self._room_before = True  # the previous reading showed room
        self._queue_before = False  # the previous reading showed a long queue
        self.misses = 0  # answered readings without vLLM metrics, in a row
        self.unreachable_since: float | None = None
        self._ok_at_unreachable = 0
        self._last_latency_cut = -1e9
        self._latency_seen = 0.0

    def observe(self, load: ServerLoad, *, saturated: bool, timeout_s: float) -> bool:
        """Take one reading; returns True when the limit went up (waiters should wake)."""
        s = self.settings
        self.load = load
        self.misses = 0
        self.unreachable_since = None
        c = self.ep.concurrency
        latency = self.ep.stats.window_latency_max_s or None
        self.ep.stats.window_latency_max_s = 0.0
        now = load.at
        cut_ok = now - self._last_latency_cut >= max(2.0, self._latency_seen)
        before = c.limit
        queued = long_queue(s, load)
        kv_full = load.kv_usage is not None and load.kv_usage >= s.kv_high
        if load.waiting > 0 and (kv_full or (queued and self._queue_before)):
            # The server runs all it can and still has calls waiting: that is its capacity
            # now (the latest evidence: the mix of calls, short or long, changes it).
            self.capacity = load.running
        limit, why = decide(
            s,
            load,
            limit=before,
            inflight=c.inflight,
            saturated=saturated,
            latency_s=latency,
            timeout_s=timeout_s,
            probing=self.probing,
            capacity=self.capacity,
            room_before=self._room_before,
            queue_before=self._queue_before,
            latency_cut_ok=cut_ok,
        )
        full = batch_full(s, load, self.capacity)
        self._room_before = not queued and not (full and load.waiting > 0)
        self._queue_before = queued
        if why.startswith("lower") or why == "hold (latency)" or kv_full:
            self.probing = False  # the server has shown where its capacity ends
        if why == "lower (latency)":
            self._last_latency_cut = now
            self._latency_seen = latency or 0.0
        c.set_limit(limit)
        self.decision = why
        self.peak_limit = max(self.peak_limit, c.limit)
        return c.limit > before

    def missing(self, answered: bool, now: float) -> str | None:
        """A reading failed; returns why the endpoint should fall back, or None to wait."""
        if answered:
            self.misses += 1
            self.unreachable_since = None
            if self.misses >= self.settings.vanish_after:
                return f"{self.misses} readings in a row without vLLM metrics"
            return None
        if not self.ep.healthy:
            self.unreachable_since = None  # the pool's health check handles a dead server
            return None
        if self.unreachable_since is None:
            self.unreachable_since = now
            self._ok_at_unreachable = self.ep.stats.ok
            return None
        if (
            now - self.unreachable_since >= self.settings.unreachable_s
            and self.ep.stats.ok > self._ok_at_unreachable
        ):
            return f"unreachable for {now - self.unreachable_since:.0f}s while its calls succeed"
        return None

    def summary(self) -> dict:
        """For summary.json and `status`: how the limit followed the server."""
        load = self.load
        return {
            "follows_server": self.active,
            "metrics_url": self.url,
            "concurrency_peak": round(self.peak_limit, 1),
            "last_decision": self.decision,
            "server_running": None if load is None else load.running,
            "server_waiting": None if load is None else load.waiting,
            "server_kv_cache_usage": None if load is None else load.kv_usage,
        }


class LoadFollower:
    """The poller of one endpoint pool: detects which endpoints publish vLLM metrics,
    then reads them every `interval_s` and sets those endpoints' limits.

    `start()` blocks until each endpoint has been asked once (a few seconds at most)
    and starts the poller task; `close()` cancels it and awaits it, and closes the
    HTTP session. Cancelling `start()` leaves nothing running once `close()` ran.
    """

    def __init__(
        self,
        pool: EndpointPool,
        settings: FollowSettings,
        wake: Callable[[int], None],
        demand: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._wake = wake  # the pool's: let waiting calls take new slots
        self._demand = demand  # the pool's: calls are waiting for a slot
        self._clock = clock  # the pool's: when a reading went missing
        self.follows: list[ServerFollow] = []
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        https = any(ep.client.config.base_url.startswith("https") for ep in self.pool.endpoints)
        ca = next((ep.client.config.ca_bundle for ep in self.pool.endpoints), None)
        # Its own session, without the API key: vLLM serves /metrics without one.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls_context(ca) if https else True)
        )
        name = self.pool.config.name
        for ep in self.pool.endpoints:
            url = metrics_url(ep.client.config.base_url)
            load = None
            if ep.healthy and ep.client.config.provider == "openai":
                load, _ = await self._read(url, timeout_s=5.0)
            if load is None:
                ep.concurrency.cap(s.fallback)
                if s.managed:
                    log.warning(
                        "%s: %s publishes no vLLM metrics; its concurrency stays a fixed %d "
                        "(AIMD) instead of following the server",
                        name,
                        url,
                        s.fallback,
                    )
                else:
                    log.info(
                        "%s: no vLLM metrics at %s: concurrency capped at %d (AIMD)",
                        name,
                        url,
                        s.fallback,
                    )
                continue
            follow = ServerFollow(ep, url, s)
            follow.load = load
            ep.concurrency.follow(s.start)
            ep.follow = follow
            self.follows.append(follow)
            log.info(
                "%s: %s publishes vLLM metrics (running %g, waiting %g): its concurrency "
                "follows the server, from %d up to %d",
                name,
                url,
                load.running,
                load.waiting,
                s.start,
                s.ceiling,
            )
        if self.follows:
            self._task = asyncio.create_task(self._loop(), name=f"{name}-follow")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _read(self, url: str, timeout_s: float) -> tuple[ServerLoad | None, bool]:
        """(the load, whether the server answered at all)."""
        assert self._session is not None
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    return None, True
                text = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None, False
        return parse_load(text), True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            if not await self.poll_once():
                return

    async def poll_once(self) -> bool:
        """Read every followed server once and apply the readings; False once none is
        followed any more (the poller then ends)."""
        live = [f for f in self.follows if f.active]
        if not live:
            return False
        timeout = max(1.0, 2 * self.settings.interval_s)
        readings = await asyncio.gather(*(self._read(f.url, timeout) for f in live))
        demand = self._demand()
        for follow, (load, answered) in zip(live, readings, strict=True):
            self.poll_result(follow, load, answered, demand)
        return any(f.active for f in self.follows)

    def poll_result(
        self, follow: ServerFollow, load: ServerLoad | None, answered: bool, demand: bool
    ) -> None:
        """Apply one reading (or its absence) to an endpoint."""
        ep = follow.ep
        if load is None:
            why = follow.missing(answered, self._clock())
            if why is not None:
                self._fall_back(follow, why)
            return
        c = ep.concurrency
        saturated = demand or c.inflight >= 0.9 * c.limit
        before = c.limit
        if follow.observe(load, saturated=saturated, timeout_s=ep.client.config.timeout_s):
            self._wake(max(0, c.free))
        if c.limit != before and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: %s %s: limit %.0f -> %.0f (in flight %d; server %g running, %g waiting)",
                self.pool.config.name,
                ep.name,
                follow.decision,
                before,
                c.limit,
                c.inflight,
                load.running,
                load.waiting,
            )

    def _fall_back(self, follow: ServerFollow, why: str) -> None:
        follow.active = False
        follow.decision = f"fell back: {why}"
        follow.ep.concurrency.unfollow(self.settings.fallback)
        log.warning(
            "%s: %s (%s): ignoring it from now on; the endpoint's concurrency goes back "
            "to a fixed %d (AIMD)",
            self.pool.config.name,
            follow.url,
            why,
            self.settings.fallback,
        )
