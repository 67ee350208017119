"""The evaluator against a real ASGI server stack: uvicorn (the server vLLM's OpenAI API
runs on) serving a small OpenAI-compatible app, with a keep-alive timeout shorter than
the idle gaps between bursts of calls. uvicorn closes the idle connections; no call may
fail for it, and none may be sent twice (counted by the server, by body hash)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter

import orjson
import pytest
import uvicorn

from tests.conftest import TEST_MODELS, read_summary, run_eval
from workers.base import Completion
from workers.client import EndpointConfig
from workers.pool import EndpointPool, PoolConfig
from workers.providers import get_provider
from workers.simulated import SimConfig, SimulatedServer

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

KEEP_ALIVE_S = 1


class OpenAICompatApp:
    """A plain ASGI app: GET /v1/models and POST /v1/chat/completions, answered by the
    simulated backend's logic (no HTTP of its own), with a count of every request body
    and of the client connections (host, port) each came over."""

    def __init__(self) -> None:
        self.sim = SimulatedServer(SimConfig(served_names=TEST_MODELS))  # only its answers are used
        self.bodies: Counter[str] = Counter()
        self.connections: list[tuple[str, int]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is expected
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            status, body = 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
        elif method == "POST" and path == "/v1/chat/completions":
            self.bodies[hashlib.sha256(raw).hexdigest()] += 1
            self.connections.append(tuple(scope["client"]))
            status, body = self.sim.respond("chat", orjson.loads(raw))
        else:
            status, body = 404, {"error": {"message": "not found", "type": "not_found"}}
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def uvicorn_app():
    """The app served by uvicorn in a thread, on a free port; stopped at teardown."""
    app = OpenAICompatApp()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            timeout_keep_alive=KEEP_ALIVE_S,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield app, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_bursts_with_idle_gaps_past_uvicorns_keep_alive(uvicorn_app):
    app, url = uvicorn_app
    provider = get_provider("openai")
    bursts, per_burst = 4, 16

    def body(i: int) -> bytes:
        payload = provider.build_body(
            "m", "s", f"Question {i}?", temperature=0.1, top_p=0.9, max_tokens=64
        )
        return orjson.dumps(payload)

    async def go() -> list[list[Completion]]:
        config = EndpointConfig(url, concurrency=per_burst, rpm=60_000)
        pool_config = PoolConfig(max_attempts=6, backoff_base_s=0.05)
        results = []
        async with EndpointPool([config], pool_config) as pool:
            await pool.check()
            for b in range(bursts):
                if b:
                    await asyncio.sleep(KEEP_ALIVE_S + 0.6)  # idle past uvicorn's keep-alive
                calls = [pool.chat(body(b * per_burst + i)) for i in range(per_burst)]
                results.append(await asyncio.gather(*calls))
        return results

    results = asyncio.run(go())
    flat = [r for burst in results for r in burst]
    assert all(isinstance(r, Completion) for r in flat), [
        r.message for r in flat if not isinstance(r, Completion)
    ]
    assert all(r.attempts == 1 for r in flat)  # not one call needed a second try
    assert len(app.bodies) == bursts * per_burst and set(app.bodies.values()) == {1}
    # uvicorn did close the idle connections: each burst came over connections the
    # previous burst did not use.
    used = [set(app.connections[b * per_burst : (b + 1) * per_burst]) for b in range(bursts)]
    for before, after in zip(used, used[1:], strict=False):
        assert before.isdisjoint(after)


def test_a_run_against_uvicorn(uvicorn_app, tmp_path, synthetic):
    app, url = uvicorn_app
    n = 12
    out = tmp_path / "run"
    assert run_eval(synthetic(n), url, out, "--judge-model", "m") == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n
    assert sum(app.bodies.values()) == len(app.bodies) == 3 * n + 1  # each call once, + the preflight
