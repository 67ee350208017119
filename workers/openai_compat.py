"""OpenAI-compatible chat completions (vLLM, OpenAI, and the many servers that copy it).

Wire format: POST {base_url}/chat/completions with a JSON body; the answer is
`choices[0].message.content`, with reasoning in `message.reasoning_content`
(vLLM's reasoning parsers) or `message.reasoning` (some other servers), and
`usage` with prompt/completion token counts. Followed: the OpenAI API reference
for chat completions (platform.openai.com/docs/api-reference/chat/create) and
vLLM's "OpenAI-Compatible Server" page. Rate-limit headers: OpenAI's "Rate
limits" guide (x-ratelimit-*, durations such as "6m0s").

The helpers for OpenAI's error bodies and headers are shared with the
Responses API (workers.openai_responses), which uses the same conventions.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from workers.base import CallFailure, Completion, ErrorClass, UnusableBody, clean_usage
from workers.client import Attempt, EndpointConfig, EndpointUnreachable, HTTPClient
from workers.limits import RateLimitHeaders, wait_seconds

__all__ = [
    "Attempt",
    "ChatWire",
    "EndpointConfig",
    "EndpointUnreachable",
    "OpenAICompatClient",
    "classify_http_error",
]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_seconds(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s"."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait: `retry-after-ms` (OpenAI), `Retry-After` (RFC 9110: seconds or a
    date), else the later of the `x-ratelimit-reset-*` durations (OpenAI's rate-limit
    headers). Unreadable values are ignored; a wait longer than the run may wait
    (`inf` included) stops the run (workers.pool, --max-retry-wait)."""
    ms = wait_seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = wait_seconds(headers.get("Retry-After"))
    if value is not None:
        return value
    resets = [
        _duration_seconds(headers.get(name, ""))
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if headers.get(name)
    ]
    resets = [r for r in resets if r is not None]
    return max(resets) if resets else None


def _error_message(status: int, raw: bytes) -> tuple[str, str]:
    """(message, machine code) from an OpenAI-style error body, tolerant of any body."""
    try:
        body = orjson.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else {}
        if isinstance(err, dict):
            msg = str(
                err.get("message") or err.get("detail") or raw[:300].decode("utf-8", "replace")
            )
            code = str(err.get("code") or err.get("type") or "")
            return msg, code
        return str(err), ""
    except (orjson.JSONDecodeError, AttributeError):
        return raw[:300].decode("utf-8", "replace"), ""


def classify_http_error(status: int, message: str, code: str) -> ErrorClass:
    """Map an HTTP error status (and the provider's code/message) to an error class.

    Also used for Anthropic's error types (workers.anthropic): `billing_error`,
    a spend limit (`enforced_spend_limit_reached`, sent as a 429) and a low credit
    balance are fatal; "prompt is too long" is its context-length message.
    """
    text = f"{code} {message}".lower()
    if any(s in text for s in ("insufficient_quota", "billing", "spend_limit", "credit balance")):
        return ErrorClass.FATAL
    if status == 429:
        return ErrorClass.RATE_LIMIT
    if status in (401, 402, 403):
        return ErrorClass.FATAL
    if status in (408, 409) or status >= 500:
        return ErrorClass.TRANSIENT
    if any(
        s in text
        for s in ("context_length", "context length", "maximum context", "prompt is too long")
    ):
        return ErrorClass.CONTEXT_LENGTH
    if "content_filter" in text or "content_policy" in text or "content management policy" in text:
        return ErrorClass.CONTENT_FILTER
    return ErrorClass.INVALID_REQUEST


def parse_chat(body: dict[str, Any]) -> Completion | CallFailure:
    """A Completion from a chat-completions body, a final CallFailure, or an
    UnusableBody saying why it holds no answer."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        return UnusableBody(
            f"unusable response body: {orjson.dumps(body)[:200].decode('utf-8', 'replace')!r}"
        )
    finish = choice.get("finish_reason")
    content = message.get("content")
    if finish == "content_filter":
        # The provider withheld (the rest of) the answer: an answer that is a refusal, with
        # whatever text came before the filter stopped it (often none).
        return Completion(
            content=content if isinstance(content, str) else "",
            finish_reason="content_filter",
            usage=clean_usage(body.get("usage")),
        )
    if not isinstance(content, str):
        return UnusableBody("response message has no text content")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    citations = [
        {"url": a["url_citation"].get("url"), "title": a["url_citation"].get("title")}
        for a in message.get("annotations") or []
        if isinstance(a, dict) and isinstance(a.get("url_citation"), dict)
    ]
    return Completion(
        content=content,
        reasoning=reasoning if isinstance(reasoning, str) else None,
        finish_reason=finish,
        usage=clean_usage(body.get("usage")),
        citations=citations,
    )


class OpenAIErrors:
    """OpenAI's error bodies, rate-limit headers and Retry-After conventions (chat and Responses)."""

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def error(self, status: int, raw: bytes) -> tuple[ErrorClass, str]:
        msg, code = _error_message(status, raw)
        return classify_http_error(status, msg, code), f"HTTP {status}: {msg}"

    def rate_limits(self, headers: Any) -> RateLimitHeaders | None:
        # Most local servers send none: skip building an empty record for every answer.
        if not any(name in headers for name in _LIMIT_HEADERS):
            return None
        return RateLimitHeaders.parse(headers, _duration_seconds)

    def retry_after(self, headers: Any) -> float | None:
        return _retry_after_seconds(headers)


_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
)


class ChatWire(OpenAIErrors):
    path = "/chat/completions"

    def parse(self, body: dict[str, Any]) -> Completion | CallFailure:
        return parse_chat(body)


class OpenAICompatClient(HTTPClient):
    """A chat-completions endpoint (the default provider)."""

    def __init__(self, config: EndpointConfig) -> None:
        super().__init__(config, ChatWire())
