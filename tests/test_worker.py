"""The OpenAI-compatible worker over real loopback HTTP: retries, Retry-After, error classes."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiohttp import web

from workers.base import CallFailure, Completion, ErrorClass, FatalEndpointError, redact
from workers.openai_compat import EndpointConfig, EndpointUnreachable, OpenAICompatClient
from workers.pool import EndpointPool, PoolConfig

OK_BODY = {
    "choices": [
        {
            "message": {"role": "assistant", "content": "hello", "reasoning_content": "r"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


class Scripted:
    """A real HTTP server that answers each request with the next scripted response."""

    def __init__(self, script):
        self.script = list(script)
        self.hits: list[float] = []
        self.auth: list[str | None] = []

    async def handler(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.hits.append(time.monotonic())
        self.auth.append(request.headers.get("Authorization"))
        step = self.script.pop(0) if self.script else (200, OK_BODY, {})
        status, body, headers = step
        if status == "sleep":
            await asyncio.sleep(body)
            status, body, headers = 200, OK_BODY, {}
        if status == "reset":
            request.transport.close()
            return web.Response()
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(
            status=status, body=raw, headers=headers, content_type="application/json"
        )


async def _serve(scripted: Scripted):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted.handler)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


POOL_FIELDS = {"max_attempts"}


def _call(script, **cfg):
    """One call through a pool of one endpoint, against a scripted real server."""
    scripted = Scripted(script)
    pool_cfg = {k: v for k, v in cfg.items() if k in POOL_FIELDS}
    ep_cfg = {k: v for k, v in cfg.items() if k not in POOL_FIELDS}

    async def go():
        runner, url = await _serve(scripted)
        try:
            pool = EndpointPool(
                [EndpointConfig(base_url=url, **ep_cfg)],
                PoolConfig(backoff_base_s=0.01, backoff_max_s=0.05, **pool_cfg),
            )
            async with pool:
                return await pool.chat(b'{"model": "m", "messages": []}')
        finally:
            await runner.cleanup()

    return asyncio.run(go()), scripted


def _err(code: str, message: str = "boom") -> dict:
    return {"error": {"message": message, "code": code, "type": code}}


@pytest.mark.slow
def test_success_parses_answer_reasoning_and_usage():
    result, _ = _call([])
    assert isinstance(result, Completion)
    assert (result.content, result.reasoning, result.finish_reason) == ("hello", "r", "stop")
    assert result.usage["prompt_tokens"] == 3 and result.attempts == 1


@pytest.mark.slow
def test_429_waits_for_retry_after_then_succeeds():
    result, s = _call([(429, _err("rate_limit_exceeded"), {"Retry-After": "0.3"})])
    assert isinstance(result, Completion) and result.attempts == 2
    assert s.hits[1] - s.hits[0] >= 0.3


@pytest.mark.slow
def test_retry_after_ms_is_preferred():
    result, s = _call(
        [(429, _err("rate_limit_exceeded"), {"retry-after-ms": "200", "Retry-After": "30"})]
    )
    assert isinstance(result, Completion)
    assert 0.2 <= s.hits[1] - s.hits[0] < 5


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    [
        (500, _err("server_error"), {}),
        (503, b"<html>busy</html>", {}),
        (200, b"{not json", {}),
        (200, {"choices": []}, {}),
        ("reset", None, {}),
    ],
)
def test_transient_errors_are_retried(step):
    result, s = _call([step, step])
    assert isinstance(result, Completion) and result.attempts == 3 and len(s.hits) == 3


@pytest.mark.slow
def test_timeout_is_transient():
    result, _ = _call([("sleep", 2.0, {})], timeout_s=0.3, max_attempts=2)
    assert isinstance(result, Completion) and result.attempts == 2


@pytest.mark.slow
def test_exhausted_retries_give_a_failure_not_an_answer():
    result, s = _call([(503, _err("server_error"), {})] * 3, max_attempts=3)
    assert isinstance(result, CallFailure)
    assert result.error_class is ErrorClass.TRANSIENT and result.attempts == 3 and len(s.hits) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "status, code, message, cls",
    [
        (400, "invalid_request_error", "bad field", ErrorClass.INVALID_REQUEST),
        (404, "model_not_found", "no such model", ErrorClass.INVALID_REQUEST),
        (
            400,
            "context_length_exceeded",
            "This model's maximum context length is 8192",
            ErrorClass.CONTEXT_LENGTH,
        ),
    ],
)
def test_non_retryable_errors_are_recorded_once(status, code, message, cls):
    result, s = _call([(status, _err(code, message), {})])
    assert isinstance(result, CallFailure) and result.error_class is cls and len(s.hits) == 1
    assert message in result.message


@pytest.mark.slow
@pytest.mark.parametrize(
    "status, code",
    [
        (401, "invalid_api_key"),
        (403, "permission_denied"),
        (429, "insufficient_quota"),
        (402, "billing"),
    ],
)
def test_fatal_errors_stop_and_redact_the_key(status, code):
    key = "sk-test-SECRET1234567890"
    with pytest.raises(FatalEndpointError) as info:
        _call([(status, _err(code, f"Incorrect API key provided: {key}"), {})], api_key=key)
    assert key not in str(info.value) and "REDACTED" in str(info.value)


@pytest.mark.slow
def test_api_key_is_sent_as_bearer():
    _, s = _call([], api_key="sk-abc-123456789")
    assert s.auth == ["Bearer sk-abc-123456789"]


def test_unreachable_endpoint_is_reported_before_any_call():
    async def go():
        async with OpenAICompatClient(
            EndpointConfig(base_url="http://127.0.0.1:9/v1", name="judge endpoint")
        ) as c:
            await c.check()

    with pytest.raises(EndpointUnreachable, match="judge endpoint .*unreachable"):
        asyncio.run(go())


def test_redact_removes_known_and_pattern_secrets():
    assert "hunter2hunter2" not in redact("key hunter2hunter2 leaked", ("hunter2hunter2",))
    assert "sk-abcdefghijkl" not in redact("Bearer sk-abcdefghijkl")


@pytest.mark.slow
def test_429_without_retry_after_waits_for_the_rate_limit_reset():
    headers = {"x-ratelimit-reset-requests": "300ms", "x-ratelimit-reset-tokens": "20ms"}
    result, s = _call([(429, _err("rate_limit_exceeded"), headers)])
    assert isinstance(result, Completion)
    assert 0.3 <= s.hits[1] - s.hits[0] < 5


def test_reset_durations_parse():
    from workers.openai_compat import _duration_seconds

    assert _duration_seconds("6m0s") == 360
    assert _duration_seconds("1.5s") == 1.5
    assert _duration_seconds("20ms") == 0.02
    assert _duration_seconds("soon") is None
