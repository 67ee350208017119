"""One endpoint's HTTP machinery, shared by every wire format.

A client sends pre-serialised request bodies once per `attempt()` and turns
the answer into an `Attempt`: the parsed result, what the response said about
waiting (Retry-After and friends) and the provider's rate-limit headers.
Retries, routing and pacing live in workers.pool.

What differs between providers is small and lives in a `Wire` (see
workers.providers): the URL path, the auth headers, how a 200 body is read,
how an error body is classified, and which rate-limit headers are sent.

TLS and redirects are the same for every request the evaluator makes (calls,
checks, batch files): workers.transport, which also holds the capped reader and
the `Deadline`.

Hostile answers are bounded: a body is read in chunks and given up (the
connection closed, the rest never read) once it passes the size cap
(`--max-response-mb`), so an endpoint cannot make the evaluator hold more than
the cap per call in flight; an error body is read only as far as its message
needs. Every configured key is removed from what an answer carries before
anything else sees it (a server that reflects the key cannot get it into the
checkpoint or the outputs), and error bodies are redacted before they are cut.

A request's timeout does not count time the process did not run: see `Deadline`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    UnusableBody,
    redact,
    redact_bytes,
    redact_result,
)
from workers.limits import RateLimitHeaders
from workers.transport import (
    Deadline,
    certificate_message,
    read_capped,
    redirect_message,
    tls_context,
)

log = logging.getLogger("evaluator")

# The default answer cap: the largest answer a VAL-Bench call can get is its max_tokens of
# text (plus reasoning, a thinking budget, citations) as JSON, well under 1 MB even at 128K
# output tokens escaped as \uXXXX (6 bytes a token); 4 MB leaves room for any of that, and
# 64 calls in flight then hold at most 256 MB of bodies however large the answers are.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# An error body is read only this far: its message is in the first bytes.
ERROR_BODY_BYTES = 64 * 1024

__all__ = [
    "Attempt",
    "EndpointConfig",
    "EndpointMisconfigured",
    "EndpointUnreachable",
    "HTTPClient",
    "ModelList",
    "Wire",
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
    provider: str = "openai"  # a name in workers.providers.PROVIDERS
    model: str | None = None  # the model asked for here: rate buckets are per model
    ca_bundle: str | None = None  # PEM file of extra CAs to trust (https endpoints)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # a larger answer is not read
    # Every other key of the run: removed from this endpoint's answers and messages too.
    secrets: tuple[str, ...] = ()


@dataclass(slots=True)
class Attempt:
    """One HTTP exchange: its result and what the response said about limits."""

    result: Completion | CallFailure
    retry_after_s: float | None = None
    limits: RateLimitHeaders | None = None
    connection_failed: bool = False  # no HTTP answer at all (refused, reset, timeout)


class EndpointUnreachable(Exception):
    """The endpoint could not be reached or rejected us before any paid call."""


@dataclass(slots=True)
class ModelList:
    """What GET {base_url}/models said: the served model ids and who owns them.

    `status` is the HTTP status (200 when listed); `ids` is empty when the server has no
    usable list (404, an unexpected body), which says nothing about what it serves.
    """

    status: int
    ids: list[str]
    owned_by: set[str]

    @property
    def listed(self) -> bool:
        return self.status == 200 and bool(self.ids)


class EndpointMisconfigured(EndpointUnreachable):
    """The endpoint answered in a way no retry can fix: a TLS certificate that does not
    verify, or a redirect. The URL or the trusted CAs must change."""


class Wire(Protocol):
    """What a provider's wire format supplies to the shared client."""

    path: str  # appended to the base URL: "/chat/completions", "/responses", "/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]: ...

    # The answer, a CallFailure the body reports, or an UnusableBody (workers.base).
    def parse(self, body: dict[str, Any]) -> Completion | CallFailure: ...

    def error(self, status: int, raw: bytes) -> tuple[ErrorClass, str]: ...

    def rate_limits(self, headers: Any) -> RateLimitHeaders: ...

    def retry_after(self, headers: Any) -> float | None: ...


def parse_raw(wire: Wire, raw: bytes) -> Completion | CallFailure:
    """`wire.parse` on undecoded bytes; a body that is not a JSON object is unusable."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return UnusableBody(f"unusable response body: {raw[:200].decode('utf-8', 'replace')!r}")
    return wire.parse(body)


class HTTPClient:
    """One endpoint: an aiohttp session, a start-up check, and single attempts."""

    def __init__(self, config: EndpointConfig, wire: Wire) -> None:
        self.config = config
        self.wire = wire
        self.url = config.base_url.rstrip("/") + wire.path
        self._url = URL(self.url)  # parsed once, not by aiohttp on every request
        self._session: aiohttp.ClientSession | None = None
        own = (config.api_key,) if config.api_key else ()
        self._secrets = tuple(dict.fromkeys((*own, *config.secrets)))
        # No aiohttp timeout on calls: Deadline (below) bounds each attempt instead.
        self._no_timeout = aiohttp.ClientTimeout(total=None)
        self._stall_logged = -1e9

    async def __aenter__(self) -> HTTPClient:
        headers = {
            "Content-Type": "application/json",
            **self.wire.auth_headers(self.config.api_key),
        }
        # Plain-http endpoints never need a TLS context: skip loading the CA store for them.
        tls = tls_context(self.config.ca_bundle) if self._url.scheme == "https" else True
        connector = aiohttp.TCPConnector(
            limit=self.config.concurrency + 8, ttl_dns_cache=300, ssl=tls
        )
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

    async def check(self, timeout_s: float = 15.0) -> ModelList:
        """Fail fast before any paid call: GET /models must answer. Returns what it lists.

        OpenAI, Anthropic and vLLM all list models at `{base_url}/models`.
        Raises EndpointUnreachable (EndpointMisconfigured for a certificate that does not
        verify or a redirect), or FatalEndpointError when the key is refused.
        """
        assert self._session is not None, "use the client as an async context manager"
        url = self.config.base_url.rstrip("/") + "/models"
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
            ) as resp:
                raw = await read_capped(resp, self.config.max_response_bytes)
                if raw is None:  # a list larger than any model list: not a usable one
                    return ModelList(resp.status, [], set())
                if 300 <= resp.status < 400:
                    where = resp.headers.get("Location")
                    msg = redirect_message(self.config.name, "GET", url, resp.status, where)
                    raise EndpointMisconfigured(self.redact(msg))
                if resp.status in (401, 403):
                    _, msg = self.wire.error(resp.status, raw)
                    failure = CallFailure(
                        ErrorClass.FATAL,
                        f"rejected the API key ({self.config.base_url}): {self.redact(msg)}",
                        resp.status,
                    )
                    raise FatalEndpointError(self.config.name, failure)
                if resp.status >= 400:
                    # Some compatible APIs do not implement /models; reachability is what matters.
                    return ModelList(resp.status, [], set())
                return _model_list(resp.status, raw)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise EndpointMisconfigured(certificate_message(self.config.name, exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EndpointUnreachable(
                f"{self.config.name} ({self.config.base_url}) is unreachable: "
                f"{self.redact(str(exc) or type(exc).__name__)}"
            ) from None

    async def attempt(self, body: bytes) -> Attempt:
        """Send one request (already serialised) once; never raises for HTTP or network errors."""
        assert self._session is not None, "use the client as an async context manager"
        start = time.monotonic()
        deadline = Deadline(self.config.timeout_s)
        try:
            async with deadline:
                async with self._session.post(
                    self._url, data=body, timeout=self._no_timeout, allow_redirects=False
                ) as r:
                    if r.status == 200:
                        raw = await read_capped(r, self.config.max_response_bytes)
                        if raw is None:
                            return self._too_large(r.headers, start)
                    else:  # only the message is needed: never more than its first bytes
                        raw = await read_capped(r, ERROR_BODY_BYTES, keep_prefix=True)
                    return self._answer(r.status, r.headers, raw, start)
        except aiohttp.ClientConnectorCertificateError as exc:
            # Not transient: retrying the same certificate cannot help.
            failure = CallFailure(
                ErrorClass.FATAL, certificate_message(self.config.name, exc), None
            )
            failure.latency_s = time.monotonic() - start
            return Attempt(failure)
        except TimeoutError:
            failure = CallFailure(
                ErrorClass.TRANSIENT, f"timed out after {self.config.timeout_s:g}s", None
            )
        except (aiohttp.ClientError, OSError) as exc:
            failure = CallFailure(
                ErrorClass.TRANSIENT, self.redact(f"{type(exc).__name__}: {exc}"), None
            )
        finally:
            if deadline.stalled_s:
                self._log_stall(deadline.stalled_s)
        failure.latency_s = time.monotonic() - start
        return Attempt(failure, None, None, connection_failed=True)

    def _log_stall(self, seconds: float) -> None:
        now = time.monotonic()
        if now - self._stall_logged >= 60.0:  # every call in flight sees the same stall
            self._stall_logged = now
            log.warning(
                "%s: a request's timeout fell due %.1fs late (the process was stopped, or "
                "its event loop blocked): calls in flight got %gs more to read answers that "
                "arrived meanwhile instead of timing out and being sent again",
                self.config.name,
                seconds,
                Deadline.GRACE_S,
            )

    def _too_large(self, headers: Any, start: float) -> Attempt:
        mb = self.config.max_response_bytes / (1024 * 1024)
        failure = CallFailure(
            ErrorClass.RESPONSE_TOO_LARGE,
            f"the answer is larger than --max-response-mb {mb:g} MB: given up after "
            f"{self.config.max_response_bytes:,} bytes (not retried)",
            200,
        )
        failure.latency_s = time.monotonic() - start
        return Attempt(failure, None, self.wire.rate_limits(headers))

    def _answer(self, status: int, headers: Any, raw: bytes, start: float) -> Attempt:
        """An HTTP answer read into an Attempt (`headers`: a case-insensitive mapping)."""
        limits = self.wire.rate_limits(headers)
        if status == 200:
            # Keys out before the body is parsed: nothing read from it can carry one.
            parsed = parse_raw(self.wire, redact_bytes(raw, self._secrets))
            parsed.latency_s = time.monotonic() - start
            redact_result(parsed, self._secrets)  # what the raw bytes hid (escaped forms)
            if isinstance(parsed, CallFailure):
                parsed.message = self.redact(parsed.message)
                return Attempt(parsed, self.wire.retry_after(headers), limits)
            return Attempt(parsed, None, limits)
        if 300 <= status < 400:
            location = headers.get("Location")
            msg = redirect_message(self.config.name, "POST", self.url, status, location)
            failure = CallFailure(ErrorClass.FATAL, self.redact(msg), status)
            failure.latency_s = time.monotonic() - start
            return Attempt(failure)
        # Redacted whole before the wire format cuts its message short: a cut first could
        # keep a key's first characters, which nothing would then recognise.
        text = self.redact(raw.decode("utf-8", "replace"))
        error_class, msg = self.wire.error(status, text.encode())
        failure = CallFailure(error_class, self.redact(msg), status)
        failure.latency_s = time.monotonic() - start
        return Attempt(failure, self.wire.retry_after(headers), limits)


def _model_list(status: int, raw: bytes) -> ModelList:
    """A /models body ({"data": [{"id", "owned_by"}, ...]}, OpenAI's, vLLM's and Anthropic's
    shape) read into a ModelList; anything else lists nothing."""
    try:
        data = orjson.loads(raw).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return ModelList(status, [], set())
    if not isinstance(data, list):
        return ModelList(status, [], set())
    entries = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    owners = {str(m["owned_by"]) for m in entries if m.get("owned_by")}
    return ModelList(status, [m["id"] for m in entries], owners)
