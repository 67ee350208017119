"""Per-endpoint limits: requests/min and tokens/min buckets, adaptive concurrency, pauses.

The buckets are aiolimiter's. What aiolimiter does not do is done here, on top
of it: correcting the token bucket with the tokens a call really used (a
credit spent by later calls), re-tuning a bucket to the limit the provider
announces in its `x-ratelimit-*` headers, and pausing the whole endpoint
when it says to wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from aiolimiter import AsyncLimiter

# Requests whose estimate exceeds a bucket's capacity still pass, one at a time.
_MIN_WINDOW_S = 1.0
_MAX_WINDOW_S = 60.0


def per_minute_bucket(per_minute: float, largest: float = 1.0) -> AsyncLimiter:
    """A bucket for `per_minute` units that refills smoothly rather than once a minute.

    The window is the shortest (>= 1 s) whose capacity still holds the largest
    single acquisition, so a whole minute's budget is never spent in one burst.
    """
    window = min(_MAX_WINDOW_S, max(_MIN_WINDOW_S, 60.0 * largest / per_minute))
    # Below one unit a minute (--rpm 0.5: one request every two minutes) even a minute's
    # window holds less than one unit, and aiolimiter refuses to acquire more than its
    # capacity: the window grows until it holds one.
    window = max(window, 60.0 / per_minute)
    return AsyncLimiter(per_minute * window / 60.0, window)


def drain(bucket: AsyncLimiter) -> None:
    """Take whatever the bucket holds right now, without waiting.

    Used when the provider says we are over its limit: our bucket believed
    otherwise, so it restarts empty rather than letting a burst follow the 429.
    """
    amount = bucket.max_rate
    while amount >= 1:
        if bucket.has_capacity(amount):
            # has_capacity guarantees acquire() returns at once; done synchronously by
            # stepping the coroutine, so no other task can take the capacity first.
            coro = bucket.acquire(amount)
            try:
                coro.send(None)
            except StopIteration:
                pass
            else:  # pragma: no cover - would mean aiolimiter changed its contract
                coro.close()
        amount /= 2


class TokenBudget:
    """Tokens/min bucket, charged the way providers count a request on arrival.

    A request costs its prompt tokens plus its `max_tokens`, whatever it later
    generates (providers do not refund unused `max_tokens` within the window).
    The prompt is estimated from its size in bytes; the ratio is corrected with
    the `usage.prompt_tokens` the provider reports, so the estimate converges
    on the provider's own count.
    """

    def __init__(self, tpm: float, largest: float, tokens_per_byte: float = 0.25) -> None:
        self.tpm = tpm
        self._largest = largest
        self._bucket = per_minute_bucket(tpm, largest)
        self.tokens_per_byte = tokens_per_byte

    def estimate(self, body_bytes: int, max_tokens: int) -> float:
        return body_bytes * self.tokens_per_byte + max_tokens

    async def charge(self, tokens: float) -> None:
        await self._bucket.acquire(min(tokens, self._bucket.max_rate))

    def calibrate(self, body_bytes: int, prompt_tokens: int) -> None:
        if body_bytes > 0 and prompt_tokens > 0:
            observed = prompt_tokens / body_bytes
            self.tokens_per_byte += 0.1 * (observed - self.tokens_per_byte)

    def drain(self) -> None:
        drain(self._bucket)

    def retune(self, tpm: float) -> None:
        if abs(tpm - self.tpm) / self.tpm > 0.01:
            self.tpm = tpm
            self._bucket = per_minute_bucket(tpm, self._largest)


class AdaptiveConcurrency:
    """AIMD limit on one endpoint's calls in flight.

    A rate-limit episode cuts the limit by `decrease` (at most once per
    `cooldown_s`, so one burst of 429s is one cut); a success while the limit
    is fully used grows it by about one per round of `limit` successes, up to
    `maximum`. Ordinary 5xx errors leave it alone: they say nothing about load.

    With `initial` below `maximum` it starts in slow start (as TCP does): every
    success while saturated adds a whole slot, doubling the limit each round,
    until the first rate-limit episode or the maximum. Used when an endpoint's
    limits are unknown, so the first wave is small rather than a burst of 429s.

    When the endpoint's server publishes its load (workers.server_aware), the
    limit follows the server instead: `follow()` stops the growth on successes
    and the server-aware poller sets the limit (`set_limit`); rate-limit cuts
    still apply. `unfollow()` returns to AIMD under a fixed cap.
    """

    def __init__(
        self,
        maximum: int,
        minimum: int = 1,
        decrease: float = 0.7,
        cooldown_s: float = 2.0,
        initial: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: where the cooldown's time comes from (tests inject a fake one)."""
        self.maximum = maximum
        self._clock = clock
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(min(maximum, initial) if initial else maximum)
        self.slow_start = self.limit < maximum
        self.decrease = decrease
        self.cooldown_s = cooldown_s
        self.inflight = 0
        self.cuts = 0
        self._last_cut = -1e9
        self.follows_server = False

    @property
    def free(self) -> int:
        return int(self.limit) - self.inflight

    def set_limit(self, limit: float) -> None:
        self.limit = float(max(self.minimum, min(self.maximum, limit)))

    def cap(self, maximum: int) -> None:
        """Lower the maximum (and the limit with it); calls above it drain as they end."""
        self.maximum = max(self.minimum, min(self.maximum, maximum))
        self.limit = min(self.limit, float(self.maximum))
        self.slow_start = self.slow_start and self.limit < self.maximum

    def follow(self, start: int) -> None:
        """From now on the limit is set from outside (the server's load), from `start`."""
        self.follows_server = True
        self.slow_start = False
        self.set_limit(start)

    def unfollow(self, maximum: int) -> None:
        """Back to AIMD under a fixed cap of `maximum`."""
        self.follows_server = False
        self.cap(maximum)

    def on_success(self) -> None:
        if self.follows_server:
            return  # the server's own figures set the limit
        if self.inflight >= int(self.limit) - 1 and self.limit < self.maximum:
            step = 1.0 if self.slow_start else 1.0 / self.limit
            self.limit = min(float(self.maximum), self.limit + step)

    def on_rate_limited(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self.slow_start = False
        if now - self._last_cut >= self.cooldown_s:
            self.limit = max(float(self.minimum), self.limit * self.decrease)
            self._last_cut = now
            self.cuts += 1


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def wait_seconds(value: str | None, now: float | None = None) -> float | None:
    """A wait a server asks for (Retry-After: seconds or an HTTP date, RFC 9110 10.2.3;
    retry-after-ms in ms is divided by the caller). None when absent or unreadable; a
    negative wait is 0; "inf" is a wait without end (it stops the run: --max-retry-wait)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        now = time.time() if now is None else now
        return max(0.0, when.timestamp() - now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _checked(
    headers: Mapping[str, str], name: str, minimum: float, ignored: list[str]
) -> float | None:
    """A rate-limit header's number, or None; a value that is present but not a finite
    number >= `minimum` is noted in `ignored` ("name: value") and not used."""
    raw = headers.get(name)
    value = _number(raw)
    if raw is None:
        return None
    if value is None or not math.isfinite(value) or value < minimum:
        ignored.append(f"{name}: {raw[:40]}")
        return None
    return value


def rfc3339_seconds_from_now(text: str | None, now: float | None = None) -> float | None:
    """Seconds until an RFC 3339 time ("2025-08-21T12:40:59Z"), as Anthropic's reset headers give."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass
class RateLimitHeaders:
    """A response's rate-limit headers, in one shape whatever the provider.

    OpenAI (and servers copying it) send `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
    with reset durations; Anthropic sends `anthropic-ratelimit-{requests,tokens,input-tokens,
    output-tokens}-{limit,remaining,reset}` with RFC 3339 reset times (its "Rate limits"
    page, docs.anthropic.com/en/api/rate-limits). Anthropic's `tokens-*` headers describe
    the most restrictive token limit in effect, which is what the token bucket follows;
    the input and output limits are kept for reference.
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None
    limit_input_tokens: float | None = None
    remaining_input_tokens: float | None = None
    limit_output_tokens: float | None = None
    remaining_output_tokens: float | None = None
    # Headers present but unusable ("name: value"): a limit that is not a finite number of
    # at least one, a remaining count that is negative or not finite. They are left out
    # (aiolimiter cannot take a bucket of 0.01, nor NaN) and the pool warns once.
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(cls, headers: Mapping[str, str], duration) -> RateLimitHeaders:
        def reset(name: str) -> float | None:
            raw = headers.get(name)
            return duration(raw) if raw else None

        ignored: list[str] = []
        return cls(
            limit_requests=_checked(headers, "x-ratelimit-limit-requests", 1.0, ignored),
            remaining_requests=_checked(headers, "x-ratelimit-remaining-requests", 0.0, ignored),
            reset_requests_s=reset("x-ratelimit-reset-requests"),
            limit_tokens=_checked(headers, "x-ratelimit-limit-tokens", 1.0, ignored),
            remaining_tokens=_checked(headers, "x-ratelimit-remaining-tokens", 0.0, ignored),
            reset_tokens_s=reset("x-ratelimit-reset-tokens"),
            ignored=tuple(ignored),
        )

    @classmethod
    def parse_anthropic(
        cls, headers: Mapping[str, str], now: float | None = None
    ) -> RateLimitHeaders:
        ignored: list[str] = []

        def h(kind: str, field: str) -> float | None:
            minimum = 1.0 if field == "limit" else 0.0
            return _checked(headers, f"anthropic-ratelimit-{kind}-{field}", minimum, ignored)

        def reset(kind: str) -> float | None:
            return rfc3339_seconds_from_now(headers.get(f"anthropic-ratelimit-{kind}-reset"), now)

        tokens = "tokens" if "anthropic-ratelimit-tokens-limit" in headers else "input-tokens"
        return cls(
            limit_requests=h("requests", "limit"),
            remaining_requests=h("requests", "remaining"),
            reset_requests_s=reset("requests"),
            limit_tokens=h(tokens, "limit"),
            remaining_tokens=h(tokens, "remaining"),
            reset_tokens_s=reset(tokens),
            limit_input_tokens=h("input-tokens", "limit"),
            remaining_input_tokens=h("input-tokens", "remaining"),
            limit_output_tokens=h("output-tokens", "limit"),
            remaining_output_tokens=h("output-tokens", "remaining"),
            ignored=tuple(dict.fromkeys(ignored)),
        )


@dataclass
class EndpointLimits:
    """The provider's limits for one endpoint, key and model: rate buckets and pauses.

    Shared by every stage that sends the same model to the same endpoint with the
    same key (they draw on one allowance; workers.pool keeps the registry);
    concurrency is each stage's own (AdaptiveConcurrency).
    """

    rpm: float | None = None
    tpm: float | None = None
    largest_request_tokens: float = 8192.0
    paused_until: float = 0.0
    pause_reason: str = ""  # why the last pause began, for the log and a stop's message
    retunes: int = 0
    # Where pauses read the time (tests inject a fake clock; aiolimiter's buckets use the
    # event loop's own time).
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _requests: AsyncLimiter | None = field(default=None, repr=False)
    _tokens: TokenBudget | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.rpm:
            self._requests = per_minute_bucket(self.rpm)
        if self.tpm:
            self._tokens = TokenBudget(self.tpm, self.largest_request_tokens)

    def bucket(self, name: str) -> AsyncLimiter | None:
        """The `requests` or `tokens` bucket, if this endpoint has one (for metrics)."""
        if name == "requests":
            return self._requests
        return self._tokens._bucket if self._tokens is not None else None

    def pause(self, seconds: float) -> None:
        """Hold every new call to this endpoint for `seconds` (Retry-After, exhausted quota window)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    async def pace(self, body_bytes: int, max_tokens: int) -> None:
        """Wait for the request and token buckets (the concurrency slot is already held)."""
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            await self._tokens.charge(self._tokens.estimate(body_bytes, max_tokens))

    def calibrate(self, body_bytes: int, prompt_tokens: object) -> None:
        if self._tokens is not None and isinstance(prompt_tokens, int):
            self._tokens.calibrate(body_bytes, prompt_tokens)

    def rate_limited(self, retry_after_s: float) -> None:
        """The provider refused a call for rate: pause, and restart our buckets empty."""
        self.pause(retry_after_s)
        if self._requests is not None:
            drain(self._requests)
        if self._tokens is not None:
            self._tokens.drain()

    def observe(self, h: RateLimitHeaders) -> None:
        """Re-tune from the provider's own accounting."""
        if h.limit_requests and (self.rpm is None or h.limit_requests < self.rpm * 0.99):
            self.rpm = h.limit_requests
            self._requests = per_minute_bucket(h.limit_requests)
            self.retunes += 1
        if h.limit_tokens and (self.tpm is None or h.limit_tokens < self.tpm * 0.99):
            self.tpm = h.limit_tokens
            if self._tokens is None:
                self._tokens = TokenBudget(h.limit_tokens, self.largest_request_tokens)
            else:
                self._tokens.retune(h.limit_tokens)
            self.retunes += 1
        # Nothing left in the provider's window: wait instead of collecting 429s. Providers
        # refill continuously, so wait for one request's worth, not the full reset.
        if h.remaining_requests is not None and h.remaining_requests < 1 and h.reset_requests_s:
            refill = 60.0 / self.rpm if self.rpm else h.reset_requests_s
            self.pause(min(h.reset_requests_s, refill))
        if (
            h.remaining_tokens is not None
            and h.remaining_tokens < self.largest_request_tokens / 4
            and h.reset_tokens_s
        ):
            refill = 60.0 * self.largest_request_tokens / self.tpm if self.tpm else h.reset_tokens_s
            self.pause(min(h.reset_tokens_s, refill))
