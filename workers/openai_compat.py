"""Client for OpenAI-compatible chat completions (vLLM, OpenAI, and the many servers that copy it).

Wire format: POST {base_url}/chat/completions with a JSON body; the answer is
`choices[0].message.content`, with reasoning in `message.reasoning_content`
(vLLM's reasoning parsers) or `message.reasoning` (some other servers), and
`usage` with prompt/completion token counts. Followed: the OpenAI API reference
for chat completions and vLLM's "OpenAI-Compatible Server" page.

One aiohttp session per endpoint; requests are pre-serialised bytes so the
caller can fingerprint exactly what was sent.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from workers.base import CallFailure, Completion, ErrorClass, FatalEndpointError, redact
from workers.limits import RateLimitHeaders

__all__ = [
    "Attempt",
    "EndpointConfig",
    "EndpointUnreachable",
    "OpenAICompatClient",
    "classify_http_error",
]


@dataclass(slots=True)
class EndpointConfig:
    base_url: str
    api_key: str | None = None
    name: str = "endpoint"
    concurrency: int = 64  # the most calls in flight (AIMD may hold fewer)
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 600.0


@dataclass(slots=True)
class Attempt:
    """One HTTP exchange: its result and what the response said about limits."""

    result: Completion | CallFailure
    retry_after_s: float | None = None
    limits: RateLimitHeaders | None = None
    connection_failed: bool = False  # no HTTP answer at all (refused, reset, timeout)


class EndpointUnreachable(Exception):
    """The endpoint could not be reached or rejected us before any paid call."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_seconds(text: str) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s"."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait: `retry-after-ms` (OpenAI), `Retry-After` (RFC 9110, seconds form),
    else the later of the `x-ratelimit-reset-*` durations (OpenAI's rate-limit headers)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # the HTTP-date form: rare from LLM APIs
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
    """Map an HTTP error status (and the provider's code/message) to an error class."""
    text = f"{code} {message}".lower()
    if "insufficient_quota" in text or "billing" in text:
        return ErrorClass.FATAL
    if status == 429:
        return ErrorClass.RATE_LIMIT
    if status in (401, 402, 403):
        return ErrorClass.FATAL
    if status in (408, 409) or status >= 500:
        return ErrorClass.TRANSIENT
    if "context_length" in text or "context length" in text or "maximum context" in text:
        return ErrorClass.CONTEXT_LENGTH
    if "content_filter" in text or "content_policy" in text or "content management policy" in text:
        return ErrorClass.CONTENT_FILTER
    return ErrorClass.INVALID_REQUEST


def _parse_completion(raw: bytes) -> Completion | CallFailure | str:
    """A Completion from a 200 body, a final CallFailure, or a string saying why the body is unusable."""
    try:
        body = orjson.loads(raw)
        choice = body["choices"][0]
        message = choice["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"unusable response body: {raw[:200].decode('utf-8', 'replace')!r}"
    finish = choice.get("finish_reason")
    if finish == "content_filter":
        return CallFailure(
            ErrorClass.CONTENT_FILTER, "the provider's content filter stopped the answer", 200
        )
    content = message.get("content")
    if not isinstance(content, str):
        return "response message has no text content"
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return Completion(
        content=content,
        reasoning=reasoning if isinstance(reasoning, str) else None,
        finish_reason=finish,
        usage=body.get("usage") or {},
    )


class OpenAICompatClient:
    """One endpoint's wire protocol: a session, a start-up check, and single attempts.

    Retries, routing and pacing live in workers.pool, which may spread one
    call's attempts over several endpoints.
    """

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        self._secrets = (config.api_key,) if config.api_key else ()
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    async def __aenter__(self) -> OpenAICompatClient:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        connector = aiohttp.TCPConnector(limit=self.config.concurrency + 8, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def check(self, timeout_s: float = 15.0) -> list[str]:
        """Fail fast before any paid call: GET /models must answer. Returns the served model ids.

        Raises EndpointUnreachable, or FatalEndpointError when the key is refused.
        """
        assert self._session is not None, "use the client as an async context manager"
        url = self.config.base_url.rstrip("/") + "/models"
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                raw = await resp.read()
                if resp.status in (401, 403):
                    msg, _ = _error_message(resp.status, raw)
                    failure = CallFailure(
                        ErrorClass.FATAL,
                        f"rejected the API key ({self.config.base_url}): "
                        f"HTTP {resp.status} {self.redact(msg)}",
                        resp.status,
                    )
                    raise FatalEndpointError(self.config.name, failure)
                if resp.status >= 400:
                    # Some compatible APIs do not implement /models; reachability is what matters.
                    return []
                try:
                    return [m.get("id", "") for m in orjson.loads(raw).get("data", [])]
                except (orjson.JSONDecodeError, AttributeError):
                    return []
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EndpointUnreachable(
                f"{self.config.name} ({self.config.base_url}) is unreachable: "
                f"{self.redact(str(exc) or type(exc).__name__)}"
            ) from None

    async def attempt(self, body: bytes) -> Attempt:
        """Send one request (already serialised) once; never raises for HTTP or network errors."""
        assert self._session is not None, "use the client as an async context manager"
        start = time.monotonic()
        try:
            async with self._session.post(self.url, data=body, timeout=self._timeout) as resp:
                raw = await resp.read()
                limits = RateLimitHeaders.parse(resp.headers, _duration_seconds)
                if resp.status == 200:
                    parsed = _parse_completion(raw)
                    if isinstance(parsed, str):
                        parsed = CallFailure(ErrorClass.TRANSIENT, parsed, 200)
                    parsed.latency_s = time.monotonic() - start
                    return Attempt(parsed, None, limits)
                msg, code = _error_message(resp.status, raw)
                failure = CallFailure(
                    classify_http_error(resp.status, msg, code),
                    self.redact(f"HTTP {resp.status}: {msg}"),
                    resp.status,
                )
                failure.latency_s = time.monotonic() - start
                return Attempt(failure, _retry_after_seconds(resp.headers), limits)
        except TimeoutError:
            failure = CallFailure(
                ErrorClass.TRANSIENT, f"timed out after {self.config.timeout_s:g}s", None
            )
        except (aiohttp.ClientError, OSError) as exc:
            failure = CallFailure(
                ErrorClass.TRANSIENT, self.redact(f"{type(exc).__name__}: {exc}"), None
            )
        failure.latency_s = time.monotonic() - start
        return Attempt(failure, None, None, connection_failed=True)
