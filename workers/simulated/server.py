"""A SIMULATED LLM API server (aiohttp) for demos, tests and benchmarks.

It is not a language model. Its "model" answers with a stance chosen by a
persona; its "judge" returns schema-valid verdicts computed from those stances.
Every answer, verdict and response carries a simulation label. It can add
latency (lognormal), 429s with Retry-After, 5xx errors and malformed verdicts,
and it counts every request it receives, keyed by the sha256 of the body, so
tests can prove what was (not) sent twice.

Endpoints: POST /v1/chat/completions (OpenAI-compatible), POST /v1/responses
(OpenAI Responses), POST /v1/messages (Anthropic Messages; key in x-api-key),
GET /v1/models, GET /health, GET /sim/stats (add ?bodies=1 for the per-body
counts). Each format's bodies and rate-limit headers are in wire.py (errors in errors.py).
With `batching` set, answers are released by a simulated continuous-batching
GPU (batching.py) and GET /metrics publishes its state under vLLM's metric names.
Given an SSL context, it serves https (tests make certificates with trustme).
Its settings are a SimConfig (config.py); threaded.py runs it on a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import ssl
from collections import Counter

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from workers.simulated import errors, parse, personas, wire
from workers.simulated.batches import SimBatches
from workers.simulated.batching import BatchingEngine
from workers.simulated.config import DEFAULT_SERVED, SimConfig
from workers.simulated.gpu_metrics import MetricsCollector
from workers.simulated.provider_limits import ProviderLimits
from workers.simulated.wire import (  # noqa: F401 - markers tests put in questions
    MARK_CONTENT_FILTER,
    MARK_JUDGE_DUPLICATE_KEY,
    MARK_JUDGE_GARBAGE,
    MARK_TRUNCATE,
    MODEL_ERROR_MARKERS,
    SIM_FINGERPRINT,
)


class SimulatedServer:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._rng = random.Random(self.config.seed)
        self.bodies: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.received = 0
        self.not_found = 0  # requests for paths the server does not have
        self._burst_left = 0
        self._limits = (
            ProviderLimits(self.config.rpm_limit, self.config.tpm_limit)
            if self.config.rpm_limit or self.config.tpm_limit
            else None
        )
        self._burst_kind: str | None = None
        self.cached_prefixes: set[str] = set()  # Anthropic prompt caching: prefixes seen
        self.formats: Counter[str] = Counter()  # requests per wire format, web searches
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.batches = SimBatches(self)
        self.served_names = frozenset(self.config.served_names or DEFAULT_SERVED)
        self.engine: BatchingEngine | None = None
        # Tests turn this off to make /metrics vanish (404) while the server keeps answering.
        self.metrics_enabled = True
        self.metrics_scrapes = 0  # GET /metrics received
        self._metrics: CollectorRegistry | None = None

    # -- app ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[self._not_found_middleware]
        )
        for kind, path in wire.PATHS.items():
            app.router.add_post(path, self._handler(kind))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/sim/stats", self._stats)
        if self.config.batching is not None:
            app.router.add_get("/metrics", self._metrics_page)
        self.batches.install(app)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen; returns the base URL (https when `ssl_context` is given)."""
        if self.config.batching is not None and self.engine is None:
            self.engine = BatchingEngine(self.config.batching)
            self.engine.start()
            self._metrics = CollectorRegistry(auto_describe=False)
            name = (self.config.served_names or DEFAULT_SERVED)[0]
            self._metrics.register(MetricsCollector(self.engine, name))
        # With a simulated GPU, a request whose client went away is aborted (its handler
        # cancelled), as vLLM aborts it, so it stops holding a place in the batch.
        self._runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=self.config.batching is not None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self.engine is not None:  # first: requests it holds end, so shutdown need not wait
            await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.engine = None

    def stats(self, bodies: bool = False) -> dict:
        out = {
            "simulated": True,
            "requests_total": sum(self.counts.values()),
            "by_kind": dict(self.counts),
            "by_format": dict(self.formats),
            "not_found": self.not_found,
        }
        if bodies:
            out["bodies"] = dict(self.bodies)
        out["batches"] = self.batches.stats(bodies)
        if self.engine is not None:
            out["gpu"] = {**self.engine.stats(), "metrics_scrapes": self.metrics_scrapes}
        return out

    # -- handlers -------------------------------------------------------------
    @web.middleware
    async def _not_found_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Unknown paths get the JSON 404 of the server imitated, not aiohttp's text page."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            self.not_found += 1  # not a request for a model: apart from requests_total
            status, body = errors.not_found(self.config.flavor, request.method, request.path)
            return web.Response(
                status=status, body=orjson.dumps(body), content_type="application/json"
            )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok (simulated backend)")

    def _unauthorized(self, request: web.Request, kind: str = "chat") -> web.Response | None:
        """401 in the format's own shape when the key is wrong (Anthropic: x-api-key)."""
        key = self.config.api_key
        if key is None:
            return None
        given = request.headers.get("x-api-key") or request.headers.get("Authorization", "")
        if given not in (key, f"Bearer {key}"):
            self.counts["unauthorized"] += 1
            return _error(kind, 401, "invalid_api_key", "simulated server: incorrect API key")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        names = [n for n in self.config.served_names or DEFAULT_SERVED if n in self.served_names]
        anthropic = "anthropic-version" in request.headers
        body = wire.models_body(names, anthropic=anthropic, max_model_len=self.config.max_model_len)
        return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())

    async def _metrics_page(self, request: web.Request) -> web.Response:
        self.metrics_scrapes += 1
        if not self.metrics_enabled or self._metrics is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=generate_latest(self._metrics), headers={"Content-Type": CONTENT_TYPE_LATEST}
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

    def respond(self, kind: str, body: object) -> tuple[int, dict]:
        """One request body answered without HTTP faults: (status, body). Batch lines use it."""
        return wire.respond(self, kind, body)

    def _handler(self, kind: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, kind)

        return handle

    async def _handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        raw = await request.read()
        c = self.config
        self.formats[kind] += 1
        if (denied := self._unauthorized(request, kind)) is not None:
            return denied
        if kind == "messages" and not request.headers.get("anthropic-version"):
            self.counts["bad_request"] += 1
            return _error(
                kind, 400, "invalid_request_error", "anthropic-version header is required"
            )
        if c.fail_auth_after is not None and self.received >= c.fail_auth_after:
            self.counts["unauthorized"] += 1
            return _error(kind, 401, "invalid_api_key", "simulated server: key revoked")
        if c.quota_after is not None and self.received >= c.quota_after:
            self.counts["quota"] += 1
            return _error(
                kind, 429, "insufficient_quota", "simulated server: you exceeded your current quota"
            )
        self.received += 1
        self.bodies[hashlib.sha256(raw).hexdigest()] += 1
        if c.unserve_after is not None and self.received > c.unserve_after:
            self.served_names = frozenset()
        try:
            body = orjson.loads(raw)
            req = parse.extract(kind, body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration) as exc:
            self.counts["bad_request"] += 1
            return _error(kind, 400, "invalid_request_error", f"simulated server: {exc}")
        role = "judge" if personas.is_judge_prompt(req.user) else "model"
        limited = self._limits.admit(len(raw) // 4 + req.max_tokens) if self._limits else None
        if limited is not None:
            self.counts[f"{role}_429"] += 1
            resp = _error(kind, 429, "rate_limit_exceeded", "simulated: rate limit reached")
            resp.headers.update(self._limits.headers(kind))
            resp.headers.update(wire.retry_headers(kind, limited))
            return resp
        delay = self._latency()
        if c.rate_stall and self._rng.random() < c.rate_stall:
            self.counts[f"{role}_stall"] += 1
            delay += c.stall_s
        if delay:
            await asyncio.sleep(delay)
        fault = self._transient_fault()
        if fault == "429":
            self.counts[f"{role}_429"] += 1
            resp = _error(kind, 429, "rate_limit_exceeded", "simulated rate limit")
            resp.headers.update(wire.retry_headers(kind, c.retry_after_s))
            return resp
        if fault == "5xx":
            self.counts[f"{role}_5xx"] += 1
            return _error(kind, 503, "server_error", "simulated overload")
        status, answer = wire.respond(self, kind, body)
        if self.engine is not None and status == 200:
            await self._generate(kind, req, role, answer)
        response = web.Response(
            status=status, body=orjson.dumps(answer), content_type="application/json"
        )
        if self._limits is not None:
            response.headers.update(self._limits.headers(kind))
        if status == 200 and c.rate_reset and self._rng.random() < c.rate_reset:
            self.counts[f"{role}_reset"] += 1
            return await _cut_off(request, response)
        return response

    async def _generate(self, kind: str, req: parse.SimRequest, role: str, answer: dict) -> None:
        """Wait for the simulated GPU to run this request (prompt = its bytes / 4, as the
        usage counts it; its prefix = its system message)."""
        assert self.engine is not None
        usage = answer.get("usage") or {}
        text_tokens = usage.get("completion_tokens") or usage.get("output_tokens") or 1
        out = self.engine.output_tokens(role == "judge", text_tokens, req.max_tokens)
        prefix = hashlib.sha256(req.system.encode()).hexdigest() if req.system else None
        await self.engine.run(req.size // 4, out, prefix, len(req.system.encode()) // 4)
        if kind == "chat":  # the tokens "generated" are the ones the GPU spent time on
            usage["completion_tokens"] = out
            usage["total_tokens"] = usage.get("prompt_tokens", 0) + out

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

    def _answer(self, question: str, think: bool = True) -> str:
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
        if c.reasoning and think:  # chat completions: vLLM-style reasoning in the content
            text = f"<think>(simulated reasoning) Weighing both sides before answering.</think>\n{text}"
        return text


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


def _error(kind: str, status: int, code: str, message: str) -> web.Response:
    status, body = errors.error_body(kind, status, code, message)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
