"""Fakes at the seams of the fast tier: an endpoint client for the pool, a stage for the
scheduler. They answer from a script, note what they were sent and when (on the loop's
clock: virtual in the fast tests, see tests/virtual_time.py), and never touch a network."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from workers.base import CallFailure, Completion, ErrorClass, FatalEndpointError
from workers.client import Attempt, EndpointConfig, EndpointUnreachable, ModelList


def ok(content: str = "fine", **usage: int) -> Attempt:
    return Attempt(Completion(content, usage=usage or {"prompt_tokens": 10}))


def fail(error_class: ErrorClass, status: int | None = None, **kwargs) -> Attempt:
    return Attempt(CallFailure(error_class, f"scripted {error_class.value}", status), **kwargs)


def rate_limited(retry_after_s: float | None) -> Attempt:
    return fail(ErrorClass.RATE_LIMIT, 429, retry_after_s=retry_after_s)


def refused_connection() -> Attempt:
    return fail(ErrorClass.TRANSIENT, None, connection_failed=True)


@dataclass
class Step:
    """One scripted answer, given after `latency_s` (loop time)."""

    attempt: Attempt
    latency_s: float = 0.0


Script = Callable[[int, bytes], Step | Attempt]  # (n-th request to this endpoint, body)


def scripted(*steps: Step | Attempt, then: Step | Attempt | None = None) -> Script:
    """The given answers in order, then `then` (default: ok()) for every later request."""

    def answer(n: int, body: bytes) -> Step | Attempt:
        if n < len(steps):
            return steps[n]
        return then if then is not None else ok()

    return answer


class FakeClient:
    """Stands where workers.client.HTTPClient stands in an EndpointPool (its client_factory).

    `sent` holds (loop time, body) of every attempt; `inflight_max` the most attempts it
    had at once; `up` False makes both its calls and its health check fail as a dead
    server's would (connection refused)."""

    def __init__(self, config: EndpointConfig, script: Script | None = None) -> None:
        self.config = config
        self.script = script or scripted()
        self.sent: list[tuple[float, bytes]] = []
        self.inflight = 0
        self.inflight_max = 0
        self.checks = 0
        self.up = True
        self.closed = False

    async def __aenter__(self) -> FakeClient:
        return self

    async def close(self) -> None:
        self.closed = True

    async def check(self, timeout_s: float = 15.0) -> ModelList:
        self.checks += 1
        if not self.up:
            raise EndpointUnreachable(f"{self.config.base_url}: connection refused (fake)")
        return ModelList(200, [self.config.model or "m"], set())

    async def attempt(self, body: bytes) -> Attempt:
        loop = asyncio.get_running_loop()
        n = len(self.sent)
        self.sent.append((loop.time(), body))
        if not self.up:
            return refused_connection()
        step = self.script(n, body)
        if isinstance(step, Attempt):
            step = Step(step)
        self.inflight += 1
        self.inflight_max = max(self.inflight_max, self.inflight)
        try:
            if step.latency_s:
                await asyncio.sleep(step.latency_s)
        finally:
            self.inflight -= 1
        # A fresh copy: the pool writes attempts and latency into the result.
        result = step.attempt.result
        copy = (
            Completion(result.content, result.reasoning, result.finish_reason, dict(result.usage))
            if isinstance(result, Completion)
            else CallFailure(result.error_class, result.message, result.status)
        )
        if isinstance(copy, (Completion, CallFailure)):
            copy.latency_s = step.latency_s
        return Attempt(
            copy, step.attempt.retry_after_s, step.attempt.limits, step.attempt.connection_failed
        )


class FakeClients:
    """A client_factory for EndpointPool that keeps the clients it made, by base URL."""

    def __init__(self, scripts: dict[str, Script] | None = None) -> None:
        self.scripts = scripts or {}
        self.by_url: dict[str, FakeClient] = {}

    def __call__(self, config: EndpointConfig) -> FakeClient:
        client = FakeClient(config, self.scripts.get(config.base_url))
        self.by_url[config.base_url] = client
        return client

    def __getitem__(self, url: str) -> FakeClient:
        return self.by_url[url]


# -- the scheduler's side: a stage (workers.pool.EndpointPool's place) -----------------------

Answer = Callable[[dict], Completion | CallFailure | Awaitable[Completion | CallFailure]]


@dataclass
class FakeStage:
    """A ChatClient for evaluator.run.scheduler.Scheduler: `answer(request)` gives each call's
    result (it may be a coroutine, to hold a call in flight). `sent` holds the decoded
    bodies in the order they were sent, after their `before_send` (the intent) returned;
    `intent_first` is False if any call left before its intent was recorded."""

    answer: Answer
    capacity: int = 4
    sent: list[dict] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    before_send_calls: int = 0
    on_send: Callable[[dict, str | None], None] | None = None

    async def chat(
        self,
        body: bytes,
        max_tokens: int = 0,
        before_send: Callable[[], Awaitable[None]] | None = None,
        key: str | None = None,
    ) -> Completion | CallFailure:
        if before_send is not None:
            self.before_send_calls += 1
            await before_send()
        request = orjson.loads(body)
        self.sent.append(request)
        self.keys.append(key)
        if self.on_send is not None:
            self.on_send(request, key)
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, FatalEndpointError):
            raise result
        return result
