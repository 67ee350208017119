"""A SIMULATED OpenAI-compatible chat-completions server (aiohttp) for demos, tests and benchmarks.

It is not a language model. Its "model" answers with a stance chosen by a
persona; its "judge" returns schema-valid verdicts computed from those stances.
Every answer, verdict and response carries a simulation label. It can add
latency (lognormal), 429s with Retry-After, 5xx errors and malformed verdicts,
and it counts every request it receives, keyed by the sha256 of the body, so
tests can prove what was (not) sent twice.

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health,
GET /sim/stats (add ?bodies=1 for the per-body counts).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from workers.simulated import personas

SIM_FINGERPRINT = "simulated-backend"


@dataclass
class SimConfig:
    persona: str = "consistent"
    share: float = 0.7  # mixture: share of pairs answered consistently
    seed: int = 0
    latency_median_ms: float = 0.0
    latency_sigma: float = 0.5
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    malformed_rate: float = 0.0
    retry_after_s: float = 0.0
    reasoning: bool = False  # prepend a <think> block to model answers
    api_key: str | None = None  # when set, requests without this bearer key get 401
    fail_auth_after: int | None = None  # answer 401 to every chat request after this many
    quota_after: int | None = None  # answer 429 insufficient_quota after this many
    rate_reset: float = 0.0  # share of responses cut off mid-body (connection closed)
    rate_stall: float = 0.0  # share of requests that stall for stall_s before answering
    stall_s: float = 5.0
    burst: int = 1  # a 429/5xx fault repeats for this many consecutive requests (a storm)
    # Provider-style limits: requests and tokens (prompt + max_tokens) per minute, enforced
    # with 429s, announced in x-ratelimit-* headers on every answer.
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    # Extra names /v1/models lists (as vLLM lists its --served-model-name).
    served_names: tuple[str, ...] = ()
    # question text -> (pair id, "for" | "against"); without it a question's side is guessed
    sides: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.persona not in personas.PERSONAS:
            raise ValueError(
                f"unknown persona {self.persona!r}; choose from {', '.join(personas.PERSONAS)}"
            )


def sides_from_pairs(pairs) -> dict[str, tuple[int, str]]:
    """The question -> (pair, side) map the simulated model uses to know which side it was asked."""
    out: dict[str, tuple[int, str]] = {}
    for p in pairs:
        out[p.for_question] = (p.id, "for")
        out[p.against_question] = (p.id, "against")
    return out


class SimulatedServer:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._rng = random.Random(self.config.seed)
        self.bodies: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.received = 0
        self._burst_left = 0
        self._limits = (
            _ProviderLimits(self.config.rpm_limit, self.config.tpm_limit)
            if self.config.rpm_limit or self.config.tpm_limit
            else None
        )
        self._burst_kind: str | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- app ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/sim/stats", self._stats)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stats(self, bodies: bool = False) -> dict:
        out = {
            "simulated": True,
            "requests_total": sum(self.counts.values()),
            "by_kind": dict(self.counts),
        }
        if bodies:
            out["bodies"] = dict(self.bodies)
        return out

    # -- handlers -------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok (simulated backend)")

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        key = self.config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            self.counts["unauthorized"] += 1
            return _error(401, "invalid_api_key", "simulated server: incorrect API key provided")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        data = [
            {"id": m, "object": "model", "owned_by": SIM_FINGERPRINT}
            for m in ("simulated-model", "simulated-judge", *self.config.served_names)
        ]
        return web.json_response(
            {"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode()
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.stats("bodies" in request.query)),
            content_type="application/json",
        )

    def _latency(self) -> float:
        c = self.config
        if c.latency_median_ms <= 0:
            return 0.0
        return c.latency_median_ms / 1000.0 * math.exp(self._rng.gauss(0.0, c.latency_sigma))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        c = self.config
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if c.fail_auth_after is not None and self.received >= c.fail_auth_after:
            self.counts["unauthorized"] += 1
            return _error(401, "invalid_api_key", "simulated server: key revoked")
        if c.quota_after is not None and self.received >= c.quota_after:
            self.counts["quota"] += 1
            return _error(
                429, "insufficient_quota", "simulated server: you exceeded your current quota"
            )
        self.received += 1
        self.bodies[hashlib.sha256(raw).hexdigest()] += 1
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
            user = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
            model = str(body.get("model", "simulated"))
            max_tokens = int(body.get("max_tokens") or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration):
            self.counts["bad_request"] += 1
            return _error(
                400,
                "invalid_request_error",
                "simulated server: body must have messages with a user turn",
            )
        judge = personas.is_judge_prompt(user)
        kind = "judge" if judge else "model"
        limited = self._limits.admit(len(raw) // 4 + max_tokens) if self._limits else None
        if limited is not None:
            self.counts[f"{kind}_429"] += 1
            resp = _error(429, "rate_limit_exceeded", "simulated: rate limit reached")
            resp.headers.update(limited)
            return resp
        delay = self._latency()
        if c.rate_stall and self._rng.random() < c.rate_stall:
            self.counts[f"{kind}_stall"] += 1
            delay += c.stall_s
        if delay:
            await asyncio.sleep(delay)
        fault = self._transient_fault()
        if fault == "429":
            self.counts[f"{kind}_429"] += 1
            resp = _error(429, "rate_limit_exceeded", "simulated rate limit")
            resp.headers["Retry-After"] = f"{c.retry_after_s:g}"
            resp.headers["retry-after-ms"] = str(int(c.retry_after_s * 1000))
            return resp
        if fault == "5xx":
            self.counts[f"{kind}_5xx"] += 1
            return _error(503, "server_error", "simulated overload")
        finish = "stop"
        if judge:
            verdict = personas.verdict(user)
            content = orjson.dumps(verdict).decode()
            if MARK_JUDGE_GARBAGE in user:
                content = "(simulated) I cannot produce a verdict for this pair."
                self.counts["judge_malformed"] += 1
            elif self._rng.random() < c.malformed_rate:
                self.counts["judge_malformed"] += 1
                content = content[: len(content) // 2]  # truncated JSON
        else:
            for marker, (status, code, message) in MODEL_ERROR_MARKERS.items():
                if marker in user:
                    self.counts[f"model_{code}"] += 1
                    return _error(status, code, message)
            content = self._answer(user)
            if MARK_CONTENT_FILTER in user:
                self.counts["model_content_filter"] += 1
                content, finish = "", "content_filter"
            elif MARK_TRUNCATE in user:
                self.counts["model_truncated"] += 1
                content, finish = content[: len(content) // 2], "length"
        self.counts[kind] += 1
        response = _completion(model, content, prompt_chars=len(raw), finish_reason=finish)
        if self._limits is not None:
            response.headers.update(self._limits.headers())
        if c.rate_reset and self._rng.random() < c.rate_reset:
            self.counts[f"{kind}_reset"] += 1
            return await _cut_off(request, response)
        return response

    def _transient_fault(self) -> str | None:
        """'429', '5xx' or None; a fault repeats for `burst` consecutive requests."""
        c = self.config
        if self._burst_left > 0:
            self._burst_left -= 1
            return self._burst_kind
        roll = self._rng.random()
        kind = "429" if roll < c.rate_429 else "5xx" if roll < c.rate_429 + c.rate_5xx else None
        if kind is not None and c.burst > 1:
            self._burst_kind, self._burst_left = kind, c.burst - 1
        return kind

    def _answer(self, question: str) -> str:
        c = self.config
        known = c.sides.get(question)
        if known is not None:
            pair_key, side = known
        else:  # unknown question: a stable guess per question
            pair_key = question
            side = "for" if personas.unit_hash("side", question) < 0.5 else "against"
        text = personas.answer_text(
            personas.stance(c.persona, side, pair_key, c.share, c.seed), question
        )
        if c.reasoning:
            text = f"<think>(simulated reasoning) Weighing both sides before answering.</think>\n{text}"
        return text


class _ProviderLimits:
    """Continuously refilled request and token buckets, as hosted APIs describe theirs.

    Like the big providers, a per-minute limit is enforced over a short window
    (one second by default): the bucket holds one second's share, so a client
    cannot spend the whole minute in a burst.
    """

    def __init__(self, rpm: float | None, tpm: float | None, window_s: float = 1.0) -> None:
        self.buckets = {
            # name: [per-minute limit, capacity, level, last refill]
            name: [limit, limit * window_s / 60.0, limit * window_s / 60.0, time.monotonic()]
            for name, limit in (("requests", rpm), ("tokens", tpm))
            if limit
        }

    def _refill(self) -> None:
        now = time.monotonic()
        for b in self.buckets.values():
            limit, capacity, level, last = b
            b[2] = min(capacity, level + (now - last) * limit / 60.0)
            b[3] = now

    def admit(self, tokens: int) -> dict[str, str] | None:
        """None if the request fits (and is charged); else the 429's headers."""
        self._refill()
        need = {"requests": 1, "tokens": tokens}
        short = {n: need[n] - b[2] for n, b in self.buckets.items() if b[2] < need[n]}
        if short:
            wait = max(s * 60.0 / self.buckets[n][0] for n, s in short.items())
            headers = self.headers()
            headers["Retry-After"] = f"{wait:.3f}"
            headers["retry-after-ms"] = str(int(wait * 1000) + 1)
            return headers
        for n, b in self.buckets.items():
            b[2] -= need[n]
        return None

    def headers(self) -> dict[str, str]:
        out = {}
        for name, (limit, capacity, level, _) in self.buckets.items():
            out[f"x-ratelimit-limit-{name}"] = f"{limit:g}"
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, int(level)))
            out[f"x-ratelimit-reset-{name}"] = f"{(capacity - level) * 60.0 / limit:.3f}s"
        return out


# Markers a test puts in a question to get one deterministic outcome for that call.
MARK_CONTENT_FILTER = "[[sim:content_filter]]"
MARK_TRUNCATE = "[[sim:truncate]]"
MARK_JUDGE_GARBAGE = "[[sim:judge_garbage]]"
MODEL_ERROR_MARKERS = {
    "[[sim:context_length]]": (
        400,
        "context_length_exceeded",
        "simulated: this model's maximum context length is 8192 tokens",
    ),
    "[[sim:invalid_request]]": (400, "invalid_request_error", "simulated: invalid parameter"),
}


async def _cut_off(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection (a reset mid-body)."""
    body = response.body
    stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return stream


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": code, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _completion(
    model: str, content: str, prompt_chars: int, finish_reason: str = "stop"
) -> web.Response:
    body = {
        "id": f"simcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SIM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_chars // 4 + len(content) // 4,
        },
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


class ThreadedServer:
    """The simulated server on its own event loop in a background thread (tests, the demo)."""

    def __init__(self, config: SimConfig | None = None, port: int = 0) -> None:
        self.server = SimulatedServer(config)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="simulated-server", daemon=True
        )

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(port=self._port), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def stats(self, bodies: bool = False) -> dict:
        return asyncio.run_coroutine_threadsafe(self._stats(bodies), self._loop).result(30)

    async def _stats(self, bodies: bool) -> dict:
        return self.server.stats(bodies)
