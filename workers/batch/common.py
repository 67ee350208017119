"""What the two providers' Batch APIs share (`BatchAPI`): the HTTP session, retries of
an exchange, the start-up check, and reading a result body with the provider's wire.

Request bodies are the exact bytes the online client would send; results are
read with the provider's own `Wire.parse` and error classification, so a batch
answer becomes the same Completion or CallFailure an online call would.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    RetryWaitTooLong,
    redact,
    redact_result,
)
from workers.client import EndpointMisconfigured, EndpointUnreachable, Wire
from workers.retry import backoff_s, retry
from workers.transport import certificate_message, redirect_message, tls_context

log = logging.getLogger("evaluator")

__all__ = ["CUSTOM_ID", "BatchAPI", "BatchError", "BatchRef", "BatchStatus", "read_jsonl"]

CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Anthropic's rule; OpenAI accepts it too


class _Misconfigured(FatalEndpointError):
    """A certificate that does not verify or a redirect: stops a run; check() reports it as
    EndpointMisconfigured, like the online client's start-up check."""


@dataclass(frozen=True, slots=True)
class _Later:
    """A batch HTTP exchange that failed for now: worth another try after `wait_s`
    (the provider's Retry-After; None: our backoff)."""

    message: str
    wait_s: float | None


class BatchError(Exception):
    """A batch operation failed in a way retrying it will not fix (the request is wrong)."""

    def __init__(self, failure: CallFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(slots=True)
class BatchRef:
    id: str
    input_file_id: str | None = None


@dataclass(slots=True)
class BatchStatus:
    id: str
    status: str  # the provider's word
    ended: bool
    # Set when the whole batch failed (OpenAI "failed": its input was rejected).
    failure: CallFailure | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class BatchAPI(ABC):
    """The shared HTTP machinery; subclasses know one provider's batch endpoints."""

    provider = ""
    max_requests = 0
    max_bytes = 0

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        wire: Wire,
        *,
        name: str = "batch endpoint",
        http_attempts: int = 6,
        backoff_base_s: float = 1.0,
        timeout_s: float = 600.0,
        ca_bundle: str | None = None,
        max_retry_wait_s: float = 300.0,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retry_wait_s = max_retry_wait_s  # a longer Retry-After stops the run
        self.ca_bundle = ca_bundle
        self.api_key = api_key
        self.wire = wire
        self.name = name
        self.http_attempts = http_attempts
        self.backoff_base_s = backoff_base_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Its own key and every other key of the run are kept out of results and messages.
        self._secrets = tuple(dict.fromkeys((*((api_key,) if api_key else ()), *secrets)))

    async def __aenter__(self) -> BatchAPI:
        # TLS as the online client has it (workers.client): always verified.
        tls = tls_context(self.ca_bundle) if self.base_url.startswith("https://") else True
        self._session = aiohttp.ClientSession(
            headers=self.wire.auth_headers(self.api_key), connector=aiohttp.TCPConnector(ssl=tls)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- one HTTP exchange, retried while the provider says "later" ---------------
    async def _http(self, method: str, url: str, **kwargs: Any) -> bytes:
        """The body of a 2xx answer. Raises FatalEndpointError (key, quota, an untrusted
        certificate, a redirect: never followed), BatchError (a final error), or
        EndpointUnreachable once transient failures are spent."""
        assert self._session is not None, "use the batch API as an async context manager"

        def wait_after(attempt: int, result: bytes | _Later) -> float | None:
            if isinstance(result, bytes) or attempt >= self.http_attempts:
                return None
            if result.wait_s is not None:
                return result.wait_s
            return backoff_s(attempt, self.backoff_base_s)

        result = await retry(lambda _n: self._exchange(method, url, **kwargs), wait_after)
        if isinstance(result, bytes):
            return result
        raise EndpointUnreachable(f"{self.name}: {method} {url} kept failing: {result.message}")

    async def _exchange(self, method: str, url: str, **kwargs: Any) -> bytes | _Later:
        """One HTTP exchange: the body of a 2xx answer, or a transient failure (_Later)."""
        assert self._session is not None
        try:
            async with self._session.request(
                method, url, timeout=self._timeout, allow_redirects=False, **kwargs
            ) as resp:
                raw = await resp.read()
                if resp.status < 300:
                    return raw
                if resp.status < 400:
                    where = resp.headers.get("Location")
                    msg = redirect_message(self.name, method, url, resp.status, where)
                    failure = CallFailure(ErrorClass.FATAL, self.redact(msg), resp.status)
                    raise _Misconfigured(self.name, failure)
                error_class, msg = self.wire.error(resp.status, raw)
                failure = CallFailure(error_class, self.redact(msg), resp.status)
                if error_class is ErrorClass.FATAL:
                    raise FatalEndpointError(self.name, failure)
                if not error_class.retryable:
                    raise BatchError(failure)
                wait = self.wire.retry_after(resp.headers)
                if wait is not None and wait > self.max_retry_wait_s:
                    asked = "without end" if wait == float("inf") else f"{wait:,.0f}s"
                    # Fatal for the calls it reaches: they stop the run (resumable),
                    # never go into another batch.
                    failure = CallFailure(
                        ErrorClass.FATAL,
                        f"{method} {url} asked to wait {asked}, longer than "
                        f"--max-retry-wait {self.max_retry_wait_s:g}s: {failure.message}",
                        resp.status,
                    )
                    raise RetryWaitTooLong(self.name, failure, wait)
                return _Later(failure.message, wait)
        except aiohttp.ClientConnectorCertificateError as exc:
            failure = CallFailure(ErrorClass.FATAL, certificate_message(self.name, exc))
            raise _Misconfigured(self.name, failure) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return _Later(self.redact(f"{type(exc).__name__}: {exc}"), None)

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        raw = await self._http(method, url, **kwargs)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise EndpointUnreachable(f"{self.name}: {url} answered with a body that is not JSON")
        return body

    list_path = ""  # the provider's "list batches" path, probed by check()

    async def check(self) -> None:
        """Before anything is submitted: the provider must answer, accept the key and
        have a Batch API (an OpenAI-compatible server often has only the online one)."""
        try:
            await self._http("GET", self.base_url + self.list_path, params={"limit": "1"})
        except _Misconfigured as exc:
            raise EndpointMisconfigured(exc.failure.message) from None
        except BatchError as exc:
            raise FatalEndpointError(
                self.name,
                CallFailure(
                    ErrorClass.FATAL,
                    f"{self.base_url} offers no usable Batch API "
                    f"(GET {self.list_path}: {exc.failure.message})",
                    exc.failure.status,
                ),
            ) from None
        except EndpointUnreachable as exc:
            raise EndpointUnreachable(
                f"{self.name} ({self.base_url}) is unreachable: {exc}"
            ) from None

    # -- per provider -----------------------------------------------------------------
    @abstractmethod
    def line(self, custom_id: str, body: bytes) -> bytes:
        """One request as it travels in the batch (its size counts toward max_bytes)."""
        ...

    @abstractmethod
    async def create(self, lines: list[bytes], marker: str) -> BatchRef: ...

    @abstractmethod
    async def find(
        self, marker: str, since: float, n_requests: int, exclude: Collection[str]
    ) -> BatchRef | None:
        """The batch created with `marker` (a restart between create and record), or None.

        `since`: when the record was written (Unix time); `exclude`: batch ids already
        known to belong to other records.
        """
        ...

    @abstractmethod
    async def status(self, batch_id: str) -> BatchStatus: ...

    @abstractmethod
    async def results(self, status: BatchStatus) -> list[tuple[str, Completion | CallFailure]]: ...

    # -- shared result reading ----------------------------------------------------------
    def _from_body(self, body: Any) -> Completion | CallFailure:
        if not isinstance(body, dict):
            return CallFailure(ErrorClass.TRANSIENT, "batch result without a response body", 200)
        parsed = self.wire.parse(body)
        redact_result(parsed, self._secrets)  # a key reflected in an answer stays out
        return parsed

    def _from_error(self, status: int, body: Any) -> CallFailure:
        error_class, msg = self.wire.error(status, orjson.dumps(body))
        return CallFailure(error_class, self.redact(msg), status)


def read_jsonl(raw: bytes) -> Iterator[dict[str, Any]]:
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("skipping an unreadable line in a batch result file")
            continue
        if isinstance(obj, dict):
            yield obj
