"""Provider Batch APIs on the wire: submit a set of requests, poll, read each request's result.

Two providers, one shape (`BatchAPI`):

OpenAI Batch (providers "openai" and "openai-responses"). Followed: the API
reference for batches (platform.openai.com/docs/api-reference/batch: create,
retrieve, list; the "request input" and "request output" objects) and files
(platform.openai.com/docs/api-reference/files: upload with `purpose=batch`,
retrieve content). The requests go in a JSONL file, one
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` per
line, uploaded with POST /files (multipart). POST /batches takes
`{input_file_id, endpoint, completion_window: "24h", metadata}`; GET
/batches/{id} reports `status` (validating, in_progress, finalizing, completed,
failed, expired, cancelling, cancelled) and, once done, `output_file_id` and
`error_file_id`, read with GET /files/{id}/content. Each result line is
`{"custom_id", "response": {"status_code", "body"} | null, "error": {"code",
"message"} | null}`; `error.code` is `batch_expired` or `batch_cancelled` for a
request that never ran. An input file holds at most 50,000 requests and 200 MB.

Anthropic Message Batches (provider "anthropic"). Followed: the API reference
"Create a Message Batch", "Retrieve a Message Batch", "List Message Batches" and
"Retrieve Message Batch results" (docs.anthropic.com/en/api/creating-message-batches
and its siblings) and the batch processing guide
(docs.anthropic.com/en/docs/build-with-claude/batch-processing). POST
/messages/batches takes `{"requests": [{"custom_id", "params"}]}` (params: a
Messages request body); GET /messages/batches/{id} reports `processing_status`
(in_progress, canceling, ended) and `results_url`, a JSONL file of
`{"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored",
"error"} | {"type": "canceled"} | {"type": "expired"}}`. A batch holds at most
100,000 requests and 256 MB; a custom_id is 1-64 characters of [a-zA-Z0-9_-].

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
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from workers.anthropic import ERROR_STATUS as ANTHROPIC_ERROR_STATUS
from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    RetryWaitTooLong,
    redact,
    redact_result,
)
from workers.client import (
    EndpointConfig,
    EndpointMisconfigured,
    EndpointUnreachable,
    Wire,
)
from workers.providers import get_provider
from workers.retry import backoff_s, retry
from workers.transport import certificate_message, redirect_message, tls_context

log = logging.getLogger("evaluator")

__all__ = [
    "BATCH_PROVIDERS",
    "AnthropicBatchAPI",
    "BatchAPI",
    "BatchError",
    "BatchRef",
    "BatchStatus",
    "OpenAIBatchAPI",
]

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


def _jsonl(raw: bytes) -> Iterator[dict[str, Any]]:
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


class OpenAIBatchAPI(BatchAPI):
    provider = "openai"
    list_path = "/batches"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(
        self, base_url: str, api_key: str | None, wire: Wire, endpoint: str, **kwargs: Any
    ) -> None:
        super().__init__(base_url, api_key, wire, **kwargs)
        self.endpoint = endpoint  # the line's `url` and the batch's `endpoint`

    def line(self, custom_id: str, body: bytes) -> bytes:
        # The body bytes are spliced in as they are: the batch sends exactly what an online
        # call would, and the body is not parsed and re-serialised per request.
        head = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": self.endpoint})
        return head[:-1] + b',"body":' + body + b"}"

    async def create(self, lines: list[bytes], marker: str) -> BatchRef:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file",
            b"\n".join(lines) + b"\n",
            filename=f"valbench-{marker}.jsonl",
            content_type="application/jsonl",
        )
        uploaded = await self._json("POST", self.base_url + "/files", data=form)
        file_id = str(uploaded.get("id") or "")
        if not file_id:
            raise EndpointUnreachable(f"{self.name}: the file upload returned no id")
        created = await self._json(
            "POST",
            self.base_url + "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": self.endpoint,
                "completion_window": "24h",
                "metadata": {"valbench_marker": marker},
            },
        )
        return BatchRef(str(created["id"]), file_id)

    async def find(
        self, marker: str, since: float, n_requests: int, exclude: Collection[str]
    ) -> BatchRef | None:
        after: str | None = None
        while True:
            params = {"limit": "100"}
            if after:
                params["after"] = after
            page = await self._json("GET", self.base_url + "/batches", params=params)
            data = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for b in data:
                if (b.get("metadata") or {}).get("valbench_marker") == marker:
                    return BatchRef(str(b["id"]), b.get("input_file_id"))
            # Newest first: once batches are older than the record (give or take clock
            # skew), ours is not there.
            oldest = min((b.get("created_at") or 0 for b in data), default=0)
            if not page.get("has_more") or not data or oldest < since - 300:
                return None
            after = str(data[-1]["id"])

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._json("GET", f"{self.base_url}/batches/{batch_id}")
        state = str(b.get("status") or "")
        failure = None
        if state == "failed":
            errors = (b.get("errors") or {}).get("data") or []
            text = "; ".join(
                f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)
            )
            # A full queue of enqueued tokens is a wait; anything else is the batch's input
            # being refused as a whole, which retrying cannot fix: the run stops.
            cls = ErrorClass.RATE_LIMIT if "limit" in text.lower() else ErrorClass.FATAL
            failure = CallFailure(cls, self.redact(f"the batch failed: {text or 'no reason'}"))
        ended = state in ("completed", "failed", "expired", "cancelled")
        return BatchStatus(batch_id, state, ended, failure, b)

    async def results(self, status: BatchStatus) -> list[tuple[str, Completion | CallFailure]]:
        out: list[tuple[str, Completion | CallFailure]] = []
        for name in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(name)
            if not file_id:
                continue
            raw = await self._http("GET", f"{self.base_url}/files/{file_id}/content")
            for obj in _jsonl(raw):
                cid = obj.get("custom_id")
                if isinstance(cid, str):
                    out.append((cid, self._result(obj)))
        return out

    def _result(self, obj: dict[str, Any]) -> Completion | CallFailure:
        response = obj.get("response")
        error = obj.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            code = response["status_code"]
            if code == 200:
                return self._from_body(response.get("body"))
            return self._from_error(code, response.get("body") or {})
        if isinstance(error, dict):
            # The request never ran (batch_expired, batch_cancelled, request_timeout): try again.
            return CallFailure(
                ErrorClass.TRANSIENT,
                self.redact(f"{error.get('code')}: {error.get('message')}"),
            )
        return CallFailure(ErrorClass.TRANSIENT, "batch result line without response or error")


class AnthropicBatchAPI(BatchAPI):
    provider = "anthropic"
    list_path = "/messages/batches"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def line(self, custom_id: str, body: bytes) -> bytes:
        return b'{"custom_id":' + orjson.dumps(custom_id) + b',"params":' + body + b"}"

    async def create(self, lines: list[bytes], marker: str) -> BatchRef:
        payload = b'{"requests":[' + b",".join(lines) + b"]}"
        created = await self._json(
            "POST",
            self.base_url + "/messages/batches",
            data=payload,
            headers={"Content-Type": "application/json"},
        )
        return BatchRef(str(created["id"]))

    async def find(
        self, marker: str, since: float, n_requests: int, exclude: Collection[str]
    ) -> BatchRef | None:
        # Message batches carry no metadata. Every custom_id carries the marker, so a batch
        # created since the record with as many requests, and not known to be another
        # record's, is adopted provisionally: only results whose custom_id has our marker
        # are taken from it, and requests it turns out not to hold are submitted again once
        # it has ended (see workers.batch_client).
        page = await self._json("GET", self.base_url + "/messages/batches", params={"limit": "100"})
        for b in page.get("data") or []:
            if not isinstance(b, dict) or str(b.get("id")) in exclude:
                continue
            total = sum(v for v in (b.get("request_counts") or {}).values() if isinstance(v, int))
            if _rfc3339(b.get("created_at")) >= since - 60 and total == n_requests:
                return BatchRef(str(b["id"]))
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._json("GET", f"{self.base_url}/messages/batches/{batch_id}")
        state = str(b.get("processing_status") or "")
        return BatchStatus(batch_id, state, state == "ended", None, b)

    async def results(self, status: BatchStatus) -> list[tuple[str, Completion | CallFailure]]:
        if not status.raw.get("results_url"):
            return []
        # The documented path at the configured base URL, not `results_url` itself: the key
        # goes to no host but the one the run was given.
        raw = await self._http("GET", f"{self.base_url}/messages/batches/{status.id}/results")
        out: list[tuple[str, Completion | CallFailure]] = []
        for obj in _jsonl(raw):
            cid = obj.get("custom_id")
            if isinstance(cid, str):
                out.append((cid, self._result(obj.get("result") or {})))
        return out

    def _result(self, result: dict[str, Any]) -> Completion | CallFailure:
        kind = result.get("type")
        if kind == "succeeded":
            return self._from_body(result.get("message"))
        if kind == "errored":
            err = result.get("error") or {}
            inner = err.get("error") if isinstance(err.get("error"), dict) else err
            status = ANTHROPIC_ERROR_STATUS.get(str(inner.get("type")), 500)
            return self._from_error(status, {"type": "error", "error": inner})
        # canceled / expired: the request never ran.
        return CallFailure(ErrorClass.TRANSIENT, f"the request was {kind} before it ran")


def _rfc3339(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


BATCH_PROVIDERS = ("openai", "openai-responses", "anthropic")


def batch_api_for(provider: str, base_url: str, api_key: str | None, **kwargs: Any) -> BatchAPI:
    """The Batch API of a provider in workers.providers, reading answers with its wire."""
    p = get_provider(provider)
    wire = p.client(EndpointConfig(base_url=base_url, api_key=api_key)).wire
    if provider == "anthropic":
        return AnthropicBatchAPI(base_url, api_key, wire, **kwargs)
    if p.batch_url is None or provider not in BATCH_PROVIDERS:
        raise ValueError(f"provider {provider!r} has no Batch API here")
    api = OpenAIBatchAPI(base_url, api_key, wire, p.batch_url, **kwargs)
    api.provider = provider
    return api
