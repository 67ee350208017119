"""Several endpoints serving one model, used as one: routing, retries, health.

A call takes a slot on the healthy, unpaused endpoint with the fewest calls
outstanding relative to its limit (least-outstanding routing), waits for that
endpoint's request and token buckets, and is sent. Its retries may go to
another endpoint: calls in flight on an endpoint that dies fail with
connection errors and are re-sent elsewhere (drain and requeue). An endpoint
that fails `down_after` times in a row with no HTTP answer is taken out of
rotation until its health check (GET /models) answers again.

Rate-limit answers pause the endpoint that gave them (Retry-After, or its
x-ratelimit reset) and cut its adaptive concurrency; other endpoints carry on.
A one-endpoint run is simply a pool of one.

Waiting is bounded: a call that would have to wait for a pause longer than
`max_retry_wait_s` (a daily limit's reset, `Retry-After: 86400` or `inf`) stops
the run instead (RetryWaitTooLong: resumable once the wait is over). Every wait
is logged, at most one line per endpoint every WaitLog.INTERVAL_S seconds.

Given `follow` settings, the pool asks each endpoint's server for its vLLM
metrics after the start-up check; the limit of those that publish them follows
the server's load (workers.server_aware), the others keep the fixed cap.

Each endpoint's state, and what an attempt's outcome does to it, is workers.endpoint;
the wait log is workers.waits. This module routes and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    RetryBudget,
    RetryWaitTooLong,
    cancel_and_wait,
)
from workers.client import (
    Attempt,
    EndpointConfig,
    EndpointMisconfigured,
    EndpointUnreachable,
    HTTPClient,
)
from workers.endpoint import (
    Endpoint,
    LimitsRegistry,
    PoolObserver,
    endpoint_limits,
    record_outcome,
)
from workers.follow_policy import FollowSettings
from workers.limits import AdaptiveConcurrency
from workers.providers import get_provider
from workers.retry import backoff_s, retry
from workers.server_aware import LoadFollower
from workers.waits import WaitLog

log = logging.getLogger("evaluator")

SLOW_START = 8  # first wave per endpoint and stage when its rate limits are unknown
# The longest wait a server may ask of a run (--max-retry-wait). Per-minute limits (OpenAI's
# RPM/TPM, Anthropic's continuously refilled buckets, a busy vLLM behind a gateway) ask for
# seconds, at most about a minute; a longer wait means a daily limit or a quota window, whose
# reset is hours away: better a clear stop, resumable later, than a job asleep until then.
DEFAULT_MAX_RETRY_WAIT_S = 300.0

# Endpoint is part of the pool's face (`pool.endpoints`); it lives in workers.endpoint.
__all__ = ["Endpoint", "EndpointPool", "PoolConfig"]


@dataclass
class _Call:
    """One call's state across its attempts (EndpointPool.chat)."""

    body: bytes
    max_tokens: int
    before_send: Callable[[], Awaitable[None]] | None
    start: float
    errors: int = 0
    rate_limited: int = 0
    ep: Endpoint | None = None  # the last attempt's endpoint and outcome (None: no slot)
    outcome: Attempt | None = None


@dataclass
class PoolConfig:
    name: str = "endpoint pool"
    max_attempts: int = 6  # failed attempts of a call (rate-limit answers count apart)
    max_rate_limited: int = 30  # 429 answers one call may wait through before it fails
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    down_after: int = 3  # consecutive no-answer failures before an endpoint leaves rotation
    health_interval_s: float = 2.0
    all_down_timeout_s: float = 600.0  # then calls fail (resumable) instead of waiting forever
    retry_budget: RetryBudget | None = None
    max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S  # a longer pause stops the run


class EndpointPool:
    def __init__(
        self,
        endpoints: list[EndpointConfig],
        config: PoolConfig,
        shared_limits: LimitsRegistry | None = None,
        observer: PoolObserver | None = None,
        follow: FollowSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        client_factory: Callable[[EndpointConfig], HTTPClient] | None = None,
    ) -> None:
        """`shared_limits`: one registry for all pools of a run, so stages that send the
        same model to the same endpoint with the same key share its rate buckets (and
        are told so at start). `follow`: let endpoints whose servers publish vLLM
        metrics follow their load (each endpoint's `concurrency` is then the ceiling;
        the others are capped at `follow.fallback`). `clock`, `sleep`: the time the pool
        reads and how it waits (backoffs, health checks); `client_factory`: each endpoint's
        client (by default its provider's). Tests pass fakes for all three."""
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.config = config
        self.observer = observer
        self.clock = clock
        self._sleep = sleep
        make_client = client_factory or (lambda ep: get_provider(ep.provider).client(ep))
        registry = shared_limits if shared_limits is not None else {}
        self.endpoints = []
        for ep in endpoints:
            limits = endpoint_limits(registry, ep, config.name, clock)
            # Unknown limits: slow start, so the first wave is small, not a burst of 429s.
            initial = SLOW_START if ep.rpm is None and ep.tpm is None else None
            client = make_client(ep)
            concurrency = AdaptiveConcurrency(ep.concurrency, initial=initial, clock=clock)
            self.endpoints.append(Endpoint(client, limits, concurrency))
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._health_task: asyncio.Task[None] | None = None
        self._all_down_since: float | None = None
        self.waits = WaitLog(config.name, clock=clock)
        self._follow_settings = follow
        self.follower: LoadFollower | None = None

    @property
    def capacity(self) -> int:
        """Calls this pool may have in flight at most: the sum of the endpoints' caps."""
        return sum(ep.concurrency.maximum for ep in self.endpoints)

    # -- lifetime -------------------------------------------------------------
    async def __aenter__(self) -> EndpointPool:
        for ep in self.endpoints:
            await ep.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.follower is not None:
            await self.follower.close()
            self.follower = None
        await cancel_and_wait(self._health_task)
        self._health_task = None
        for ep in self.endpoints:
            await ep.client.close()

    async def check(self) -> None:
        """Before any paid call: at least one endpoint must answer; others start out of rotation.

        Raises EndpointUnreachable when none does, FatalEndpointError when a key is refused.
        """
        errors = []
        for ep in self.endpoints:
            try:
                ep.models = await ep.client.check()
            except EndpointMisconfigured:
                raise  # a wrong URL or an untrusted certificate: no waiting fixes it
            except EndpointUnreachable as exc:
                errors.append(str(exc))
                ep.healthy = False
        if all(not ep.healthy for ep in self.endpoints):
            raise EndpointUnreachable("; ".join(errors))
        for message in errors:
            log.warning("%s; it joins the pool when it answers", message)
        self._health_task = asyncio.create_task(
            self._health_loop(), name=f"{self.config.name}-health"
        )
        if self._follow_settings is not None and self.follower is None:
            self.follower = LoadFollower(
                self, self._follow_settings, self._wake, lambda: bool(self._waiters), self.clock
            )
            await self.follower.start()  # closed by __aexit__, whatever happens next

    # -- routing --------------------------------------------------------------
    def _best(self) -> Endpoint | None:
        best = None
        for ep in self.endpoints:
            if ep.available and (best is None or ep.load() < best.load()):
                best = ep
        return best

    async def _take_slot(self) -> Endpoint | None:
        """A slot on the best endpoint, or None once no endpoint has answered for too long."""
        while True:
            ep = self._best()
            if ep is not None:
                self._all_down_since = None
                ep.concurrency.inflight += 1
                return ep
            if not any(e.healthy for e in self.endpoints):
                now = self.clock()
                self._all_down_since = self._all_down_since or now
                if now - self._all_down_since > self.config.all_down_timeout_s:
                    return None
                await self._sleep(min(1.0, self.config.health_interval_s))
                continue
            # A pause ends by time, not by a release: wake up for it too.
            pauses = [
                e.limits.paused_for for e in self.endpoints if e.healthy and e.limits.paused_for
            ]
            self._check_wait(pauses)
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                if pauses:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), min(pauses) + 0.001)
                else:
                    await fut
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    def _check_wait(self, pauses: list[float]) -> None:
        """Raise RetryWaitTooLong when every healthy endpoint is paused for longer than the
        run may wait (an endpoint that is only busy, not paused, is worth waiting for)."""
        healthy = [e for e in self.endpoints if e.healthy]
        if not pauses or len(pauses) < len(healthy):
            return
        shortest = min(pauses)
        if shortest <= self.config.max_retry_wait_s:
            return
        ep = min(healthy, key=lambda e: e.limits.paused_for)
        asked = "without end" if shortest == float("inf") else f"{shortest:,.0f}s"
        failure = CallFailure(
            ErrorClass.RATE_LIMIT,
            f"{ep.name} asked to wait {asked} ({ep.limits.pause_reason or 'rate limit'}), "
            f"longer than --max-retry-wait {self.config.max_retry_wait_s:g}s",
            None,
        )
        self._wake(len(self._waiters))  # every waiting call finds the same and stops too
        raise RetryWaitTooLong(self.config.name, failure, shortest)

    def _release(self, ep: Endpoint) -> None:
        ep.concurrency.inflight -= 1
        self._wake(1)

    def _wake(self, n: int) -> None:
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    # -- calls ----------------------------------------------------------------
    async def chat(
        self,
        body: bytes,
        max_tokens: int = 0,
        before_send: Callable[[], Awaitable[None]] | None = None,
        key: str | None = None,
    ) -> Completion | CallFailure:
        """Send one request with retries across the pool (`key`, the call's identity, is
        for batch mode; an online call does not need it).

        `before_send` is awaited once, when the first attempt holds its slot and
        has passed the rate buckets, just before the request leaves: the caller
        records its intent there, so "started" means really about to be sent.

        Returns a Completion, or a CallFailure once retries are spent or the
        error is final. Raises FatalEndpointError for auth/quota failures.
        Tokens are charged as the providers count them: the prompt (estimated
        from its size, calibrated on the reported usage) plus `max_tokens`.
        """
        call = _Call(body, max_tokens, before_send, self.clock())
        result = await retry(
            lambda n: self._attempt(call, n),
            lambda n, r: self._wait_after(call, n, r),
            sleep=self._sleep,
        )
        result.latency_s = self.clock() - call.start
        return result

    async def _attempt(self, call: _Call, n: int) -> Completion | CallFailure:
        """One attempt of a call on the endpoint whose slot it gets."""
        call.ep = call.outcome = None
        ep = await self._take_slot()
        if ep is None:
            return CallFailure(
                ErrorClass.TRANSIENT,
                f"no endpoint of {self.config.name} has answered for "
                f"{self.config.all_down_timeout_s:g}s",
                None,
                n,
            )
        observer = self.observer
        try:
            await ep.limits.pace(len(call.body), call.max_tokens)
            if call.before_send is not None:
                await call.before_send()
                call.before_send = None
            ep.stats.sent += 1
            if observer is not None:
                observer.attempt_started(ep)
            outcome = await ep.client.attempt(call.body)
        finally:
            self._release(ep)
        result = outcome.result
        record_outcome(
            ep,
            outcome,
            len(call.body),
            pool=self.config.name,
            down_after=self.config.down_after,
            waits=self.waits,
            backoff=self._backoff,
            wake=self._wake,
            wake_all=lambda: self._wake(len(self._waiters)),
        )
        if observer is not None:
            observer.attempt_finished(ep, outcome)
        result.attempts = n
        if isinstance(result, CallFailure) and result.error_class is ErrorClass.FATAL:
            result.latency_s = self.clock() - call.start
            raise FatalEndpointError(self.config.name, result)
        call.ep, call.outcome = ep, outcome
        return result

    def _wait_after(self, call: _Call, n: int, result: Completion | CallFailure) -> float | None:
        """The pool's retry policy: None to stop with `result`, else the wait before the next."""
        ep, outcome = call.ep, call.outcome
        if isinstance(result, Completion) or ep is None or outcome is None:
            return None  # an answer, or no endpoint left to try
        failure = result
        if failure.error_class is ErrorClass.RATE_LIMIT:
            # Waiting out a provider's limit is pacing, not failing: its own cap.
            call.rate_limited += 1
            spent = call.rate_limited >= self.config.max_rate_limited
        else:
            call.errors += 1
            spent = call.errors >= self.config.max_attempts
        if not failure.error_class.retryable or spent:
            return None
        if self.observer is not None:
            # A wait longer than the run may wait is not waited: the next slot stops it.
            waited = min(outcome.retry_after_s or 0.0, self.config.max_retry_wait_s)
            self.observer.retrying(ep, failure.error_class.value, waited)
        budget = self.config.retry_budget
        if budget is not None and not budget.take():
            failure.message += " (the run's retry budget is spent)"
            return None
        if outcome.connection_failed and self._others_available(ep):
            return 0.0  # that endpoint may be gone: go straight to another one
        if failure.error_class is ErrorClass.RATE_LIMIT:
            return 0.0  # rate limits wait through the endpoint's pause instead (record_outcome)
        wait = self._backoff(n)
        self.waits.note(ep.name, wait, f"retry after {failure.message[:120]}")
        return wait

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.backoff_base_s, self.config.backoff_max_s)

    def _others_available(self, ep: Endpoint) -> bool:
        return any(o is not ep and o.healthy for o in self.endpoints)

    async def _health_loop(self) -> None:
        while True:
            await self._sleep(self.config.health_interval_s)
            for ep in self.endpoints:
                if ep.healthy:
                    continue
                try:
                    await ep.client.check(timeout_s=5.0)
                except (EndpointUnreachable, FatalEndpointError):
                    continue
                ep.healthy = True
                ep.consecutive_failures = 0
                log.warning("%s: %s answers again; back in rotation", self.config.name, ep.name)
                self._wake(ep.concurrency.free)
