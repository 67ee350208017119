"""One endpoint of a pool: its client, rate buckets, concurrency, health and counts, and
what one attempt's outcome does to them (`record_outcome`). The pool (workers.pool)
routes calls across endpoints and owns the retry policy; this module keeps their state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from workers.base import Completion, ErrorClass
from workers.client import Attempt, EndpointConfig, HTTPClient, ModelList
from workers.limits import AdaptiveConcurrency, EndpointLimits
from workers.server_aware import ServerFollow
from workers.waits import WaitLog

log = logging.getLogger("evaluator")

__all__ = [
    "Endpoint",
    "EndpointStats",
    "LimitsRegistry",
    "PoolObserver",
    "endpoint_limits",
    "record_outcome",
]


# Rate buckets of a run by (base URL, API key, model): providers limit each model of an
# account apart (OpenAI's limits are per model), so a model and its judge on one account
# get a bucket each unless they are the same model. The value also names the pool that
# made the bucket, for the warning when another stage shares it.
LimitsRegistry = dict[tuple[str, str | None, str | None], tuple[EndpointLimits, str]]


class PoolObserver(Protocol):
    """Hooks for metrics; the pool calls them on its hot path, so they must be cheap."""

    def attempt_started(self, ep: Endpoint) -> None: ...

    def attempt_finished(self, ep: Endpoint, outcome: Attempt) -> None: ...

    def retrying(self, ep: Endpoint, error_class: str, wait_s: float) -> None: ...


@dataclass
class EndpointStats:
    sent: int = 0
    ok: int = 0
    rate_limited: int = 0
    transient: int = 0
    connection_failures: int = 0
    retry_after_waited_s: float = 0.0
    # The longest attempt (answered or not) since the server-aware poller last looked.
    window_latency_max_s: float = 0.0


@dataclass
class Endpoint:
    client: HTTPClient  # the endpoint's provider's client (workers.providers)
    limits: EndpointLimits  # shared with another stage's endpoint of the same URL, key, model
    concurrency: AdaptiveConcurrency
    healthy: bool = True
    consecutive_failures: int = 0
    stats: EndpointStats = field(default_factory=EndpointStats)
    models: ModelList | None = None  # what its /models listed at start (None: not reached)
    warned_headers: bool = False  # its unusable rate-limit headers were reported
    follow: ServerFollow | None = None  # its server's load, when the limit follows it

    @property
    def name(self) -> str:
        return self.client.config.base_url

    @property
    def available(self) -> bool:
        return self.healthy and self.concurrency.free > 0 and self.limits.paused_for == 0

    def load(self) -> float:
        c = self.concurrency
        return c.inflight / max(c.limit, 1.0)


def endpoint_limits(
    registry: LimitsRegistry, ep: EndpointConfig, pool: str, clock: Callable[[], float]
) -> EndpointLimits:
    """The rate buckets of `ep` for pool `pool`: the registry's, when another pool of the
    run already made them for the same URL, key and model (with a warning at start when
    that pool is another stage's), else new ones, registered."""
    key = (ep.base_url.rstrip("/"), ep.api_key, ep.model)
    found = registry.get(key)
    if found is None:
        limits = EndpointLimits(rpm=ep.rpm, tpm=ep.tpm, clock=clock)
        registry[key] = (limits, pool)
    else:
        limits, owner = found
        if owner != pool:
            _warn_shared(pool, owner, ep, limits)
    return limits


def record_outcome(
    ep: Endpoint,
    outcome: Attempt,
    body_bytes: int,
    *,
    pool: str,
    down_after: int,
    waits: WaitLog,
    backoff: Callable[[int], float],
    wake: Callable[[int], None],
    wake_all: Callable[[], None],
) -> None:
    """One attempt's outcome on its endpoint: counts, rate-limit headers and pauses,
    concurrency, and taking the endpoint out of rotation after `down_after` failures
    with no answer. `wake(n)` and `wake_all()` wake calls waiting for a slot."""
    result = outcome.result
    if result.latency_s > ep.stats.window_latency_max_s:
        ep.stats.window_latency_max_s = result.latency_s
    if outcome.limits is not None:
        if outcome.limits.ignored and not ep.warned_headers:
            ep.warned_headers = True
            log.warning(
                "%s: %s sends rate-limit headers that are not usable numbers (%s); "
                "they are ignored (said once per endpoint)",
                pool,
                ep.name,
                ", ".join(outcome.limits.ignored),
            )
        before = ep.limits.paused_until
        ep.limits.observe(outcome.limits)
        if ep.limits.paused_until > before + 0.001:
            ep.limits.pause_reason = "its x-ratelimit-remaining is 0 until the reset"
            waits.note(ep.name, ep.limits.paused_for, ep.limits.pause_reason)
    if isinstance(result, Completion):
        ep.stats.ok += 1
        ep.consecutive_failures = 0
        ep.limits.calibrate(body_bytes, (result.usage or {}).get("prompt_tokens"))
        ep.concurrency.on_success()
        wake(max(0, ep.concurrency.free))
        return
    if result.error_class is ErrorClass.RATE_LIMIT:
        ep.stats.rate_limited += 1
        wait = outcome.retry_after_s
        if wait is None:
            wait = backoff(min(result.attempts, 4))
        ep.stats.retry_after_waited_s += wait
        ep.limits.rate_limited(wait)
        told = "asked by the server" if outcome.retry_after_s is not None else "backoff"
        ep.limits.pause_reason = f"HTTP {result.status or 429}, {told}"
        waits.note(ep.name, wait, ep.limits.pause_reason)
        ep.concurrency.on_rate_limited()
        return
    if outcome.connection_failed:
        ep.stats.connection_failures += 1
        ep.consecutive_failures += 1
        if ep.healthy and ep.consecutive_failures >= down_after:
            ep.healthy = False
            log.warning(
                "%s: %s failed %d times in a row (%s); out of rotation until it answers",
                pool,
                ep.name,
                ep.consecutive_failures,
                result.message,
            )
            wake_all()  # its waiters should pick another endpoint
    elif result.error_class is ErrorClass.TRANSIENT:
        ep.stats.transient += 1


def _warn_shared(name: str, owner: str, ep: EndpointConfig, limits: EndpointLimits) -> None:
    """Say at start that two stages share one rate bucket, and whose limits it has."""
    note = ""
    if (ep.rpm, ep.tpm) != (limits.rpm, limits.tpm):
        note = f"; the limits given for {name} (rpm {ep.rpm}, tpm {ep.tpm}) do not apply"
    log.warning(
        "%s and %s send model %r to %s with the same key: they share one rate-limit "
        "bucket (rpm %s, tpm %s, as set for %s)%s",
        owner,
        name,
        ep.model,
        ep.base_url,
        limits.rpm,
        limits.tpm,
        owner,
        note,
    )
