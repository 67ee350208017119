"""Types shared by every worker: what a call returns and how a failure is classified.

Workers know wire formats, not VAL-Bench. A call ends in exactly one of two
records, and a failure is never turned into an answer:

    Completion    the endpoint answered; `content` is the answer text
    CallFailure   it did not; `error_class` says what kind of failure

Error classes:

    rate_limit        429: back off (Retry-After honoured) and retry
    transient         5xx, timeout, connection reset, unusable body (UnusableBody): retry
    invalid_request   400/404/422 and similar: the request itself is wrong, no retry
    context_length    the prompt does not fit the model: no retry
    content_filter    an error response saying a content filter rejected the request: no retry
    response_too_large  the answer's body is over the size cap (--max-response-mb): no retry
    fatal             401/402/403, exhausted quota or billing: stop the whole run

A truncated answer (finish_reason "length") is a Completion, kept and flagged
by the caller, not a failure. So is an answer the provider withheld or the model
refused in a normal response (chat `finish_reason: content_filter`, Responses
`incomplete_details.reason: content_filter` or a refusal part, Anthropic
`stop_reason: refusal`): a Completion with finish_reason "content_filter" or
"refusal" and whatever text came with it. Every wire format reports truncation as "length"
and fills `usage["prompt_tokens"]` and `usage["completion_tokens"]` (beside the
provider's own fields), so callers count tokens one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    RATE_LIMIT = "rate_limit"
    TRANSIENT = "transient"
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    RESPONSE_TOO_LARGE = "response_too_large"
    FATAL = "fatal"

    @property
    def retryable(self) -> bool:
        return self in (ErrorClass.RATE_LIMIT, ErrorClass.TRANSIENT)


@dataclass(slots=True)
class Completion:
    content: str
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    latency_s: float = 0.0
    # Web sources the answer cites (web search tools): dicts with at least "url", kept apart
    # from the answer text so the judge sees only the answer.
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class CallFailure:
    error_class: ErrorClass
    message: str
    status: int | None = None
    attempts: int = 1
    latency_s: float = 0.0


class UnusableBody(CallFailure):
    """An answer with status 200 whose body holds no result: not a JSON object, no choices,
    no text. Transient (a proxy or a server under strain): retried like a 5xx. What a
    wire format's `parse` returns instead of a Completion when it cannot read one."""

    __slots__ = ()

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.TRANSIENT, message, 200)


class RetryBudget:
    """Retries left for the whole run, shared by every endpoint (None: unlimited)."""

    def __init__(self, total: int | None) -> None:
        self.left = total
        self.used = 0

    def take(self) -> bool:
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        self.used += 1
        return True


class FatalEndpointError(Exception):
    """Raised to stop a run: retrying cannot help (bad key, no quota, no permission)."""

    def __init__(self, endpoint: str, failure: CallFailure) -> None:
        super().__init__(f"{endpoint}: {failure.message}")
        self.endpoint = endpoint
        self.failure = failure


class RetryWaitTooLong(FatalEndpointError):
    """Raised to stop a run: an endpoint asked to wait longer than the run may wait
    (--max-retry-wait), as a daily limit or an exhausted quota window does. Resumable
    once that time has passed; `wait_s` is what it asked (inf: a wait without end)."""

    def __init__(self, endpoint: str, failure: CallFailure, wait_s: float) -> None:
        super().__init__(endpoint, failure)
        self.wait_s = wait_s


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has really finished."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


_SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[A-Za-z0-9._\-]{8,}"),
]


REDACTED = "[REDACTED]"


def _usable(secrets: tuple[str, ...]) -> tuple[str, ...]:
    # A "key" of one to three characters would redact ordinary text: such keys are not
    # redacted (and no provider issues them).
    return tuple(s for s in secrets if s and len(s) >= 4)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys from a message before it is logged or stored: the configured keys
    exactly, and anything shaped like a key (sk-..., a bearer token, api_key=...).

    Cut a message only after redacting it: a cut first can leave a key's first
    characters, which no pattern then recognises."""
    text = redact_keys(text, secrets)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def redact_keys(text: str, secrets: tuple[str, ...]) -> str:
    """The configured keys (exactly) replaced; nothing else touched. For model answers,
    where a pattern would also rewrite ordinary text that merely looks like a key."""
    for secret in _usable(secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_bytes(raw: bytes, secrets: tuple[str, ...]) -> bytes:
    """redact_keys on an undecoded body (a search per key: cheap on the hot path)."""
    for secret in _usable(secrets):
        token = secret.encode("utf-8", "replace")
        if token in raw:
            raw = raw.replace(token, REDACTED.encode())
    return raw


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_keys(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def redact_result(result: Completion | CallFailure, secrets: tuple[str, ...]) -> None:
    """Remove the configured keys from everything a result carries, in place: a server that
    reflects a key (in the answer, its reasoning, a citation, a JSON-escaped form the raw
    body did not show) must not get it into the checkpoint or the outputs."""
    if not _usable(secrets):
        return
    if isinstance(result, CallFailure):
        result.message = redact(result.message, secrets)
        return
    result.content = redact_keys(result.content, secrets)
    if result.reasoning is not None:
        result.reasoning = redact_keys(result.reasoning, secrets)
    if result.citations:
        result.citations = _scrub(result.citations, secrets)
    if result.usage:
        result.usage = _scrub(result.usage, secrets)


def clean_usage(raw: Any) -> dict[str, Any]:
    """A provider's `usage` as the evaluator counts it, or {} (unknown).

    Usage must be a mapping whose token counts (keys ending in "tokens", at any depth:
    prompt_tokens, cache_read_input_tokens, prompt_tokens_details.cached_tokens...) are
    integers from 0 to MAX_TOKEN_COUNT. Anything else (a string, a list, -5, 1.5, a bool) makes the
    whole usage unknown rather than a count: a server's nonsense must never become a
    cost (-$22M from a negative count). Other fields (service_tier, a cost) are kept.
    """
    if not isinstance(raw, dict):
        return {}
    return raw if _counts_ok(raw) else {}


def _counts_ok(mapping: dict[Any, Any]) -> bool:
    for key, value in mapping.items():
        if isinstance(value, dict):
            if not _counts_ok(value):
                return False
        elif isinstance(key, str) and key.endswith("tokens") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                return False
            if not 0 <= value <= MAX_TOKEN_COUNT:
                return False
    return True


# No call uses more tokens than this (the largest context windows hold about 10**7): a larger
# count is nonsense, not usage.
MAX_TOKEN_COUNT = 10**9
