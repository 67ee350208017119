"""A small keep-alive HTTP/1.1 client for plain-HTTP endpoints (local vLLM servers).

Why not aiohttp here: at 1,000 calls in flight aiohttp's request/response path costs
about 0.25 ms of CPU per call on the benchmark machine (request and response objects,
payload registry, cookie filtering, tracing hooks, stream readers, per-request timers),
which caps one event loop near the throughput of a node of local servers
(benchmarks/README.md, "What changed the figures"). The calls this evaluator makes are all the
same shape: a POST of a JSON body we already hold as bytes, answered by a JSON body.
For that shape a protocol object per connection does the job in about a third of the CPU:
one `write` of a pre-built head plus the body, and a parser for the status line,
headers, and a Content-Length or chunked body.

Scope, on purpose:
- `http://` only. Hosted APIs (`https://`) go through aiohttp, whose TLS, proxy and
  redirect handling matter there, and whose throughput is never their bottleneck:
  their rate limits are.
- No redirects, no cookies, no compression (we send `Accept-Encoding: identity`),
  no proxies (aiohttp is not told to use any either), no 1xx responses but 100.
- A connection is reused only after a complete response that allows it
  (HTTP/1.1 without `Connection: close`).

Errors are the exceptions aiohttp users expect to handle: `ConnectionError`s
(refused, reset, closed before the response ended) and `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

from multidict import CIMultiDict
from yarl import URL

__all__ = ["HTTP11Pool", "ProtocolError", "Response"]


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class ProtocolError(ConnectionError):
    """The server's answer was not HTTP/1.x as this client reads it."""


class _Connection(asyncio.Protocol):
    """One TCP connection: at most one exchange at a time."""

    def __init__(self, pool: HTTP11Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.open = True
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] | None = None
        self.length: int | None = None
        self.chunked = False
        self.until_close = False
        self.keep_alive = True
        self.body = bytearray()

    # -- asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes on an idle connection: not a state we can trust
            self._close()
            return
        self.buf += data
        try:
            done = self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(ProtocolError(f"malformed HTTP response: {exc}"))
            return
        if done:
            self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool._forget(self)
        if self.waiter is not None and not self.waiter.done():
            if self.until_close and self.headers is not None:
                self.body += self.buf
                self.buf.clear()
                self.keep_alive = False
                self._complete()
            else:
                self._fail(
                    ConnectionResetError(
                        "the server closed the connection before the response ended"
                        + (f": {exc}" if exc else "")
                    )
                )

    # -- parsing --------------------------------------------------------------
    def _parse(self) -> bool:
        """Consume what is buffered; True once the response is complete."""
        buf = self.buf
        while self.headers is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 1 << 20:
                    raise ValueError("response head over 1 MiB")
                return False
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            lines = head.split("\r\n")
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(f"status line {lines[0][:80]!r}")
            status = int(rest[:3])
            if status == 100:
                continue  # "100 Continue": the real answer follows
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"header line {line[:80]!r}")
                headers.add(name.strip(), value.strip())
            self.status, self.headers = status, headers
            connection = headers.get("Connection", "").lower()
            self.keep_alive = version == "HTTP/1.1" and "close" not in connection
            if "chunked" in headers.get("Transfer-Encoding", "").lower():
                self.chunked = True
            elif "Content-Length" in headers:
                self.length = int(headers["Content-Length"])
            elif status in (204, 304) or 100 <= status < 200:
                self.length = 0
            else:
                self.until_close = True
                self.keep_alive = False
        if self.length is not None:
            if len(buf) < self.length:
                return False
            self.body = buf[: self.length]
            del buf[: self.length]
            return True
        if self.chunked:
            return self._parse_chunks()
        self.body += buf  # until the server closes
        buf.clear()
        return False

    def _parse_chunks(self) -> bool:
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                # Trailers (rarely any), then the blank line that ends the message.
                end = buf.find(b"\r\n\r\n", line_end)
                if end < 0:
                    return False
                del buf[: end + 4]
                return True
            start = line_end + 2
            if len(buf) < start + size + 2:
                return False
            self.body += buf[start : start + size]
            del buf[: start + size + 2]

    # -- completion -----------------------------------------------------------
    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        assert self.headers is not None
        response = Response(self.status, self.headers, bytes(self.body))
        reusable = self.keep_alive and not self.buf and self.open
        self._reset()
        if reusable:
            self.pool._release(self)
        else:
            self._close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def expire(self, waiter: asyncio.Future[Response], timeout_s: float) -> None:
        if self.waiter is waiter:  # still that exchange, not a later one on this connection
            self._fail(TimeoutError(f"no complete answer within {timeout_s:g}s"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self._close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _close(self) -> None:
        self.open = False
        self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()


class HTTP11Pool:
    """Keep-alive connections to one `http://host:port`, and POSTs over them."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        u = URL(url)
        if u.scheme != "http":
            raise ValueError(f"HTTP11Pool speaks plain http only, not {u.scheme!r}")
        self.host = u.host or "127.0.0.1"
        self.port = u.port or 80
        self.path = u.raw_path_qs or "/"
        host_header = self.host if u.port in (None, 80) else f"{self.host}:{u.port}"
        fixed = {
            "Host": host_header,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": "valbench-evaluator",
            **headers,
        }
        head = f"POST {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._head = head.encode("latin-1") + b"Content-Length: "
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()

    async def post(self, body: bytes, timeout_s: float) -> Response:
        """POST `body`; the answer, or ConnectionError / TimeoutError. The caller bounds
        how many run at once (the endpoint pool's slots)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = None
        while self._idle:
            candidate = self._idle.pop()  # the most recently used: least likely timed out
            if candidate.open:  # closed ones leave the idle list, but a close may be pending
                conn = candidate
                break
        if conn is None:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port),
                timeout_s,
            )
            self._all.add(conn)
        waiter: asyncio.Future[Response] = loop.create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        # One timer per exchange, on the loop's own heap: no task or context manager.
        timer = loop.call_at(deadline, conn.expire, waiter, timeout_s)
        try:
            return await waiter
        except asyncio.CancelledError:
            # An exchange cut short leaves the connection in an unknown state; once the
            # answer is in, the connection may already serve another call: leave it be.
            if conn.waiter is waiter:
                conn._close()
            raise
        finally:
            timer.cancel()

    def _release(self, conn: _Connection) -> None:
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def close(self) -> None:
        for conn in list(self._all):
            conn._close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    def __repr__(self) -> str:  # no headers: they may hold a key
        return f"HTTP11Pool(http://{self.host}:{self.port}{self.path})"
