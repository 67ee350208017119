"""A SIMULATED server that misbehaves on purpose: for the tests and benchmarks of how the
evaluator survives a hostile or broken endpoint. Not a language model.

It is the simulated server (workers.simulated.server) with some of its chat-completions
answers changed on the way out, each switched on in `Hostile`:

    reflect_key      the bearer key the request carried, echoed in the model's answer, in
                     its reasoning (JSON-escaped, so that it is not the same bytes), in a
                     citation and in the judge's verdict text (as a logging proxy, or a
                     model that was shown its own key, could)
    fail_with_key    model calls whose question holds this marker are refused for good
                     (HTTP 400) with a body that is not JSON and has the key at byte 290,
                     across the 300-byte cut of error messages
    usage            "string", "list", "negative" or "float": nonsense in `usage`
    headers          extra headers on every chat answer (odd x-ratelimit-* values)
    retry_after      after `retry_after_from` chat requests, every one gets 429 with this
                     Retry-After value ("86400", "inf"), and a far-off reset when
                     `reset_far` is set; with `retry_after_path` ("/files"), every POST to
                     that path instead (a Batch API's upload)
    huge_mb          model answers of this many MB, streamed in 1 MB chunks (chunked, or
                     with a Content-Length when `huge_length` is set); the judge answers as
                     usual. With `huge_barrier`, the first that many huge answers wait for
                     each other before any byte is sent (all of them in flight at once).

Everything else (the judge, /models, the counts at /sim/stats) is the simulated server's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from workers.simulated import personas
from workers.simulated.config import SimConfig
from workers.simulated.server import SimulatedServer
from workers.simulated.threaded import ThreadedServer

MARK_FAIL_WITH_KEY = "[hostile:fail-with-key]"


@dataclass
class Hostile:
    reflect_key: bool = False
    fail_with_key: bool = False
    usage: str | None = None  # "string" | "list" | "negative" | "float"
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    retry_after_from: int = 0
    retry_after_path: str = "/chat/completions"  # the POST path it applies to ("/files": batches)
    reset_far: bool = False
    huge_mb: float = 0.0
    huge_length: bool = False
    huge_barrier: int = 0


class HostileServer(SimulatedServer):
    def __init__(self, config: SimConfig | None = None, hostile: Hostile | None = None) -> None:
        super().__init__(config)
        self.hostile = hostile or Hostile()
        self.chat_requests = 0
        self.huge_started = 0
        self.huge_aborted = 0  # huge answers the client stopped reading (connection closed)
        self.barrier_full = False
        self._barrier: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._misbehave)
        return app

    @web.middleware
    async def _misbehave(self, request: web.Request, handler) -> web.StreamResponse:
        h = self.hostile
        if (
            h.retry_after is not None
            and request.method == "POST"
            and h.retry_after_path != "/chat/completions"
            and request.path.endswith(h.retry_after_path)
        ):
            return self._too_many()
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return await handler(request)
        self.chat_requests += 1
        raw = await request.read()  # cached: the handler reads the same bytes
        try:
            messages = orjson.loads(raw)["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
        except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
            return await handler(request)
        judge = personas.is_judge_prompt(user)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if (
            h.retry_after is not None
            and h.retry_after_path == "/chat/completions"
            and self.chat_requests > h.retry_after_from
        ):
            return self._too_many()
        if h.fail_with_key and not judge and MARK_FAIL_WITH_KEY in user:
            self.counts["hostile_fail_with_key"] += 1
            text = ("x" * 290 + f"{key} was refused").encode()
            return web.Response(status=400, body=text, content_type="text/plain")
        if h.huge_mb and not judge:
            return await self._huge(request)
        resp = await handler(request)
        if isinstance(resp, web.Response) and resp.status == 200 and resp.body is not None:
            resp = self._rewrite(resp, judge, key)
        for name, value in h.headers.items():
            resp.headers[name] = value
        return resp

    def _too_many(self) -> web.Response:
        h = self.hostile
        self.counts["hostile_429"] += 1
        headers = {"Retry-After": str(h.retry_after)}
        if h.reset_far:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = "24h0m0s"
        body = {"error": {"message": "rate limit", "type": "rate_limit_exceeded"}}
        return web.json_response(body, status=429, headers=headers)

    def _rewrite(self, resp: web.Response, judge: bool, key: str) -> web.Response:
        h = self.hostile
        body = orjson.loads(resp.body)
        message = body["choices"][0]["message"]
        escaped = ""
        if h.reflect_key and key:
            self.counts["hostile_reflected"] += 1
            if judge:
                verdict = orjson.loads(message["content"])
                verdict["key_points_of_alignment"] += f" (the caller's key: {key})"
                message["content"] = orjson.dumps(verdict).decode()
            else:
                message["content"] += f"\n(simulated leak) your key is {key}"
                message["reasoning_content"] = "REFLECTED_ESCAPED"
                # The same key, its first character written as a JSON escape: other bytes.
                escaped = f"\\u{ord(key[0]):04x}{key[1:]}"
                message["annotations"] = [
                    {"type": "url_citation", "url_citation": {"url": f"https://x.test/?k={key}"}}
                ]
        usage = {
            "string": "lots",
            "list": [1, 2, 3],
            "negative": {"prompt_tokens": -5_000_000_000, "completion_tokens": -1},
            "float": {"prompt_tokens": 1.5, "completion_tokens": 2},
        }
        if h.usage is not None:
            body["usage"] = usage[h.usage]
        out = orjson.dumps(body)
        if escaped:
            out = out.replace(b"REFLECTED_ESCAPED", f"thinking about {escaped}".encode())
        return web.Response(status=200, body=out, content_type="application/json")

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        h = self.hostile
        self.huge_started += 1
        total = int(h.huge_mb * 1024 * 1024)
        head = b'{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"'
        tail = b'"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if h.huge_length:
            resp.content_length = len(head) + total + len(tail)
        if h.huge_barrier:
            if self._barrier is None:
                self._barrier = asyncio.Event()
            if self.huge_started >= h.huge_barrier:
                self.barrier_full = True  # that many huge answers were in flight at once
                self._barrier.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._barrier.wait(), 30)
        chunk = b"A" * (1024 * 1024)
        try:
            await resp.prepare(request)
            await resp.write(head)
            left = total
            while left > 0:
                await resp.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
            await resp.write(tail)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            self.huge_aborted += 1  # the client closed the connection: it stopped reading
        return resp

    def stats(self, bodies: bool = False) -> dict:
        out = super().stats(bodies)
        out["hostile"] = {
            "chat_requests": self.chat_requests,
            "huge_started": self.huge_started,
            "huge_aborted": self.huge_aborted,
            "barrier_full": self.barrier_full,
        }
        return out


class ThreadedHostileServer(ThreadedServer):
    """The hostile server on its own event loop in a background thread."""

    def __init__(
        self, config: SimConfig | None = None, hostile: Hostile | None = None, port: int = 0
    ) -> None:
        super().__init__(config, port)
        self.server = HostileServer(config, hostile)
