"""workers/http11.py over real loopback sockets: the answers real servers send.

The simulated server (aiohttp.web) always sends Content-Length and keeps connections
open, and the rest of the suite runs through it. Here a small raw-socket server sends
what other servers may: chunked bodies, trailers, `Connection: close`, bodies that end
at close, 100 Continue, garbage, silence, and answers cut off midway.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from workers.base import Completion, ErrorClass
from workers.client import EndpointConfig
from workers.http11 import HTTP11Pool, ProtocolError
from workers.openai_compat import OpenAICompatClient

CHAT = orjson.dumps(
    {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}], "usage": {}}
)


def _chunked(body: bytes, trailer: bytes = b"") -> bytes:
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


# What the server answers to a request whose body is the key.
ANSWERS = {
    b"plain": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT),
    b"chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(CHAT),
    b"trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunked(CHAT, b"X-Checksum: 1\r\n"),
    b"close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(CHAT), CHAT),
    b"eof": b"HTTP/1.0 200 OK\r\n\r\n" + CHAT,  # no length: the body ends when the socket does
    b"continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
    % (len(CHAT), CHAT),
    b"limited": b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
    b"x-ratelimit-limit-requests: 100\r\nContent-Length: 2\r\n\r\n{}",
    b"garbage": b"SMTP ready\r\n\r\n",
    b"cut": b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + CHAT[:20],
}
CLOSE_AFTER = {b"close", b"eof", b"garbage", b"cut"}


class RawServer:
    """An HTTP/1.1 server on loopback that answers from ANSWERS, one request at a time
    per connection; `silent` requests get no answer at all."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                body = await reader.readexactly(length)
                self.requests += 1
                if body == b"silent":
                    await asyncio.sleep(30)
                    return
                writer.write(ANSWERS[body])
                await writer.drain()
                if body in CLOSE_AFTER:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("kind", [b"plain", b"chunked", b"trailer", b"close", b"eof", b"continue"])
def test_bodies_however_framed(kind):
    async def scenario():
        async with RawServer() as server:
            pool = HTTP11Pool(server.url, {"Content-Type": "application/json"})
            try:
                first = await pool.post(kind, 5)
                second = await pool.post(kind, 5)
            finally:
                await pool.close()
            return first, second, server.connections

    first, second, connections = run(scenario())
    assert first.status == second.status == 200
    assert first.body == second.body == CHAT
    # Reused when the server allows it, a new connection when it closed the last one.
    assert connections == (2 if kind in CLOSE_AFTER else 1)


def test_headers_are_case_insensitive_and_reach_the_limits():
    async def scenario():
        async with RawServer() as server:
            config = EndpointConfig(base_url=server.url.removesuffix("/chat/completions"))
            async with OpenAICompatClient(config) as client:
                assert client._plain is not None  # plain http: the small client
                return await client.attempt(b"limited")

    outcome = run(scenario())
    assert outcome.result.error_class is ErrorClass.RATE_LIMIT
    assert outcome.retry_after_s == 7.0
    assert outcome.limits is not None and outcome.limits.limit_requests == 100


def test_failures_are_connection_errors_and_timeouts():
    async def scenario():
        async with RawServer() as server:
            pool = HTTP11Pool(server.url, {})
            results = {}
            for kind, timeout in ((b"garbage", 5), (b"cut", 5), (b"silent", 0.3)):
                try:
                    await pool.post(kind, timeout)
                except Exception as exc:  # noqa: BLE001 - the point is which one
                    results[kind] = exc
            ok = await pool.post(b"plain", 5)  # the pool recovers with a fresh connection
            await pool.close()
            return results, ok

    results, ok = run(scenario())
    assert isinstance(results[b"garbage"], ProtocolError)
    assert isinstance(results[b"cut"], ConnectionResetError)
    assert isinstance(results[b"silent"], TimeoutError)
    assert ok.body == CHAT


def test_refused_connection_is_a_transient_connection_failure():
    async def scenario():
        async with RawServer() as server:
            base = server.url.removesuffix("/chat/completions")
        # The server is gone: its port refuses connections now.
        async with OpenAICompatClient(EndpointConfig(base_url=base)) as client:
            return await client.attempt(b"plain")

    outcome = run(scenario())
    assert outcome.connection_failed
    assert outcome.result.error_class is ErrorClass.TRANSIENT


def test_completion_through_the_client_and_https_keeps_aiohttp():
    async def scenario():
        async with RawServer() as server:
            base = server.url.removesuffix("/chat/completions")
            async with OpenAICompatClient(EndpointConfig(base_url=base)) as client:
                plain = await client.attempt(b"chunked")
        async with OpenAICompatClient(
            EndpointConfig(base_url="https://api.example.invalid/v1")
        ) as c:
            tls_plain = c._plain
        return plain, tls_plain

    plain, tls_plain = run(scenario())
    assert isinstance(plain.result, Completion) and plain.result.content == "hello"
    assert tls_plain is None
    with pytest.raises(ValueError, match="plain http"):
        HTTP11Pool("https://api.example.invalid/v1", {})
