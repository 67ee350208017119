"""Types shared by every worker: what a call returns and how a failure is classified.

Workers know wire formats, not VAL-Bench. A call ends in exactly one of two
records, and a failure is never turned into an answer:

    Completion    the endpoint answered; `content` is the answer text
    CallFailure   it did not; `error_class` says what kind of failure

Error classes:

    rate_limit        429: back off (Retry-After honoured) and retry
    transient         5xx, timeout, connection reset, unreadable body: retry
    invalid_request   400/404/422 and similar: the request itself is wrong, no retry
    context_length    the prompt does not fit the model: no retry
    content_filter    an error response saying a content filter rejected the request: no retry
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


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys from a message before it is logged or stored."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text
