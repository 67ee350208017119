"""What every HTTP request of the evaluator shares, whatever its wire format: TLS,
redirects, bounded reading and a deadline that ignores stopped time.

Used by the online client (workers.client), the batch APIs (workers.batch) and the
server-aware poller (workers.server_aware).

TLS and redirects, the same for every request the evaluator makes (calls,
checks, batch files): certificates are always verified, against the system's
CAs (OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR) plus an optional CA bundle
(`--ca-bundle`, for gateways signed by a private CA); a certificate that does
not verify is a configuration error, never retried and never waved through.
Redirects are never followed: the auth headers would go along to wherever the
Location points, so a 3xx is reported as a configuration error naming it.

Hostile answers are bounded: `read_capped` reads a body in chunks and gives up
(the connection closed, the rest never read) once it passes a size cap.

A request's timeout does not count time the process did not run: see `Deadline`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

__all__ = ["Deadline", "certificate_message", "read_capped", "redirect_message", "tls_context"]


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs plus those in `ca_bundle`.

    Built per client rather than taking aiohttp's default, which is made once at import
    and so misses an SSL_CERT_FILE set later in the process. Raises OSError or
    ssl.SSLError for a bundle that cannot be read.
    """
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def certificate_message(name: str, exc: aiohttp.ClientConnectorCertificateError) -> str:
    """One line naming the host whose certificate failed, why, and what to do."""
    cause = exc.certificate_error
    reason = getattr(cause, "verify_message", None) or str(cause)
    return (
        f"{name}: the TLS certificate of {exc.host}:{exc.port} was not accepted ({reason}); "
        "if a private CA signed it, pass that CA's certificate with --ca-bundle "
        "(or SSL_CERT_FILE)"
    )


def redirect_message(name: str, method: str, url: Any, status: int, location: str | None) -> str:
    """One line naming the redirect an endpoint answered and where it pointed."""
    return (
        f"{name}: {method} {url} answered {status}, a redirect to {location or '(no Location)'}; "
        "API calls do not follow redirects (the key would be sent there too): "
        "set the base URL to where the API really is"
    )


async def read_capped(
    resp: aiohttp.ClientResponse, limit: int, *, keep_prefix: bool = False
) -> bytes | None:
    """The body, read as it arrives and never more than `limit` bytes of it.

    Over the limit the connection is closed with the rest unread, and the result is None,
    or with `keep_prefix` the first `limit` bytes. A Content-Length says so before any
    byte is read; a compressed or chunked body is counted as it is decoded (a small
    gzip body can decode to gigabytes).
    """
    length = resp.content_length
    plain = "Content-Encoding" not in resp.headers
    if plain and length is not None and length <= limit:
        return await resp.read()  # the common case: aiohttp reads exactly that many bytes
    if plain and length is not None and not keep_prefix:
        resp.close()
        return None
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            resp.close()  # the rest is never read: the connection goes, not into the pool
            if not keep_prefix:
                return None
            chunks.append(chunk[: len(chunk) - (total - limit)])
            return b"".join(chunks)
        chunks.append(chunk)


class Deadline:
    """`asyncio.timeout(seconds)` for one attempt, except that time the process did not run
    does not count against it.

    After a SIGSTOP (or a suspended VM, or a loop blocked for a while) every timer is
    overdue at once. Both event loops may then run the timeout before reading the
    sockets (uvloop runs due timers before polling for I/O), so an answer that arrived
    during the stop, and sits whole in the socket buffer, would be dropped and the call
    sent and paid for again. A timer that fires more than STALL_S late shows that the
    loop was not running; the attempt then gets GRACE_S more, in which the answer that
    is already here is read. A timer that fires on time ends the attempt as usual.
    """

    STALL_S = 0.5  # later than this, the loop was not running (its normal lag is ms)
    GRACE_S = 3.0  # to read answers already received: milliseconds each, even 1,000 of them

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stalled_s = 0.0
        self._expired = False

    async def __aenter__(self) -> Deadline:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a Deadline is entered in a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._when = self._loop.time() + self.seconds
        self._handle = self._loop.call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:
        now = self._loop.time()
        late = now - self._when
        if late > self.STALL_S:
            self.stalled_s += late
            self._when = now + self.GRACE_S
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._handle.cancel()
        # As asyncio.timeout: our cancellation becomes TimeoutError; anyone else's stands.
        if (
            self._expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc
