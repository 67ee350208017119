"""Server-aware concurrency against the continuous-batching simulator, over loopback HTTP.

The simulated GPU (workers/simulated/batching.py) queues what it cannot run and
publishes vLLM's metrics at /metrics; an endpoint pool following it reads them
(workers/server_aware.py). The poller's interval is set to an hour here and each
reading is taken by the test (`poll_once`), after waiting until the server has
seen every call in flight: the tests check decisions, not timings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AsyncExitStack

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evaluator import protocol
from tests.conftest import ROOT, TEST_MODELS, read_summary, run_cli, run_eval
from workers.client import EndpointConfig
from workers.follow_policy import FollowSettings, decide
from workers.pool import EndpointPool, PoolConfig
from workers.server_aware import ServerFollow
from workers.simulated import SimConfig, ThreadedServer
from workers.simulated.batching import BatchingConfig
from workers.vllm_metrics import ServerLoad, metrics_url, parse_load

HOUR = 3600.0


def _body(max_tokens: int = 4000, system: str = protocol.DEFAULT_JUDGE_PROMPT) -> bytes:
    return orjson.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Explain why you believe tea is better than coffee."},
            ],
            "max_tokens": max_tokens,
        }
    )


def _server(sim_server, **batching) -> ThreadedServer:
    return sim_server(batching=BatchingConfig(**batching))


async def _until(condition: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Wait for a state of the world (generous bound: the machine is shared and slow)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Harness:
    """A pool of one endpoint following a simulated GPU, and calls to keep it busy."""

    def __init__(self, server: ThreadedServer, settings: FollowSettings, timeout_s: float = 600):
        self.server = server
        self.settings = settings
        self.pool = EndpointPool(
            [
                EndpointConfig(
                    server.base_url,
                    name="model endpoint",
                    concurrency=settings.ceiling,
                    timeout_s=timeout_s,
                    model="m",
                )
            ],
            PoolConfig(name="model endpoint"),
            follow=settings,
        )
        self.ep = self.pool.endpoints[0]
        self.tasks: list[asyncio.Task] = []
        self.decisions: list[tuple[str, float]] = []

    async def __aenter__(self) -> Harness:
        await self.pool.__aenter__()
        await self.pool.check()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pool.__aexit__(*exc)

    async def send(self, n: int, body: bytes, repeat: bool = False) -> None:
        """Start n callers, each sending `body` (once, or again and again with `repeat`);
        returns once every one of them has asked the pool for a slot."""
        started = 0

        async def caller() -> None:
            nonlocal started
            started += 1  # the pool takes or queues it before this task yields
            while True:
                await self.pool.chat(body)
                if not repeat:
                    return

        self.tasks += [asyncio.create_task(caller()) for _ in range(n)]
        await _until(lambda: started == n, "the callers to start")
        await asyncio.sleep(0)

    async def load(self) -> ServerLoad:
        assert self.pool.follower is not None
        load, _ = await self.pool.follower._read(metrics_url(self.server.base_url), 10.0)
        assert load is not None
        return load

    async def seen(self, slack: int = 0) -> ServerLoad:
        """The server's load once the endpoint has filled its limit (or has no more calls
        waiting), the server has received the calls in flight (but `slack`: answers on
        their way back) and then finished a step: requests join the batch only at the
        start of a step, so a reading in the middle of one shows a queue that is not there.
        """
        c = self.ep.concurrency
        await _until(lambda: c.inflight >= int(c.limit) or not self.pool._waiters, "a full limit")
        deadline = time.monotonic() + 60
        step_mark = None
        while True:
            load = await self.load()
            if load.running + load.waiting >= c.inflight - slack:
                if step_mark is not None and load.generation_tokens > step_mark:
                    return load
                if step_mark is None:
                    step_mark = load.generation_tokens
            assert time.monotonic() < deadline, "the server never saw the calls in flight"
            await asyncio.sleep(0.01)

    async def poll(self, slack: int = 0) -> str:
        await self.seen(slack)
        assert self.pool.follower is not None
        await self.pool.follower.poll_once()
        follow = self.ep.follow
        assert follow is not None
        self.decisions.append((follow.decision, self.ep.concurrency.limit))
        return follow.decision


# -- the simulated GPU ------------------------------------------------------------------


@pytest.mark.slow
def test_simulator_publishes_vllm_metric_names_and_types(sim_server):
    server = _server(sim_server, max_num_seqs=4, output_tokens=3)

    async def go() -> str:
        async with Harness(server, FollowSettings(interval_s=HOUR, start=4)) as h:
            await h.send(6, _body())
            await _until(lambda: all(t.done() for t in h.tasks), "the calls to finish")
            load = await h.load()
            assert load.prompt_tokens and load.generation_tokens == 6 * 3
            return await _page(server)

    families = {f.name: f for f in text_string_to_metric_families(asyncio.run(go()))}
    # vLLM V1's names and types (vllm/v1/metrics/loggers.py); counters end in _total.
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert families[name].type == "gauge"
    assert families["vllm:kv_cache_usage_perc"].type == "gauge"
    for name in (
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
    ):
        assert families[name].type == "counter"
        assert families[name].samples[0].name == name + "_total"
        assert families[name].samples[0].labels == {"model_name": "m", "engine": "0"}


async def _page(server: ThreadedServer) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(metrics_url(server.base_url)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


@pytest.mark.slow
def test_simulated_gpu_batches_queues_and_caps_by_kv_cache(sim_server):
    async def run(n: int, **batching) -> dict:
        server = _server(sim_server, output_tokens=20, **batching)
        async with Harness(server, FollowSettings(interval_s=HOUR, start=n, ceiling=n)) as h:
            await h.send(n, _body())
            await _until(lambda: all(t.done() for t in h.tasks), "the calls to finish")
        return server.stats()["gpu"]

    batched = asyncio.run(run(8, max_num_seqs=8))
    one_by_one = asyncio.run(run(8, max_num_seqs=1))
    # Eight at once take about the steps of one; one at a time, eight times as many.
    assert batched["requests"] == one_by_one["requests"] == 8
    assert batched["peak_running"] == 8 and one_by_one["peak_running"] == 1
    assert batched["steps"] * 4 < one_by_one["steps"]
    # A KV cache with room for three sequences runs three, however many the batch allows.
    prompt = len(_body()) // 4
    room = 3 * (prompt + 20) + 10  # (each holds its whole prompt: no prefix shared)
    capped = asyncio.run(run(8, max_num_seqs=64, kv_cache_tokens=room, prefix_caching=False))
    assert capped["peak_running"] == 3


@pytest.mark.slow
def test_simulated_gpu_queue_shows_in_its_metrics(sim_server):
    server = _server(sim_server, max_num_seqs=2, output_tokens=5000, step_ms=20)

    async def go() -> ServerLoad:
        async with Harness(server, FollowSettings(interval_s=HOUR, start=6, ceiling=6)) as h:
            await h.send(6, _body(max_tokens=8000))
            await _until(lambda: h.ep.concurrency.inflight == 6, "six calls in flight")
            load = await h.seen()
            while load.running < 2:  # requests join the batch at the start of a step
                await asyncio.sleep(0.02)
                load = await h.seen()
            return load

    load = asyncio.run(go())
    assert (load.running, load.waiting) == (2, 4)
    assert load.kv_usage is not None and 0 < load.kv_usage <= 1


@pytest.mark.slow
def test_prefix_caching_serves_the_shared_system_prompt_from_the_cache(sim_server):
    async def hits(caching: bool) -> dict:
        server = _server(sim_server, prefix_caching=caching, output_tokens=2)
        async with Harness(server, FollowSettings(interval_s=HOUR, start=4)) as h:
            await h.send(10, _body())
            await _until(lambda: all(t.done() for t in h.tasks), "the calls to finish")
        return server.stats()["gpu"]

    on, off = asyncio.run(hits(True)), asyncio.run(hits(False))
    rubric = len(protocol.DEFAULT_JUDGE_PROMPT.encode()) // 4
    assert on["prefix_cache_hits"] >= 9 * rubric  # all but the first find the rubric cached
    assert off["prefix_cache_hits"] == 0
    assert on["prefix_cache_queries"] == off["prefix_cache_queries"] == on["prompt_tokens"]


# -- reading vLLM's metrics -----------------------------------------------------------


def test_parse_load_sums_engines_and_reads_the_older_kv_name():
    page = """# HELP vllm:num_requests_running x
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="g"} 100.0
vllm:num_requests_running{engine="1",model_name="g"} 80.0
vllm:num_requests_waiting{engine="0",model_name="g"} 3.0
vllm:num_requests_waiting{engine="1",model_name="g"} 0.0
vllm:gpu_cache_usage_perc{engine="0",model_name="g"} 0.5
vllm:gpu_cache_usage_perc{engine="1",model_name="g"} 0.75
vllm:generation_tokens_total{engine="0",model_name="g"} 1000.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="g"} 3.0
"""
    load = parse_load(page, now=5.0)
    assert load is not None
    assert (load.running, load.waiting, load.kv_usage) == (180, 3, 0.75)
    assert load.generation_tokens == 1000 and load.prompt_tokens is None and load.at == 5.0
    assert parse_load("# a page of some other server\nup 1\n") is None
    assert parse_load("<html>not metrics</html>") is None
    assert metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert metrics_url("https://gw/vllm/v1") == "https://gw/vllm/metrics"


# -- the decision ---------------------------------------------------------------------


def _decide(running, waiting, limit, inflight, **kw):
    args = {
        "saturated": True,
        "latency_s": None,
        "timeout_s": 600.0,
        "probing": False,
        "kv": 0.3,
        **kw,
    }
    load = ServerLoad(running, waiting, kv_usage=args.pop("kv"))
    return decide(FollowSettings(), load, limit=limit, inflight=inflight, **args)


def test_decide_raises_holds_and_lowers():
    assert _decide(64, 0, 64, 64, probing=True) == (128, "raise")  # doubling at first
    assert _decide(300, 0, 300, 300) == (330, "raise")  # then by a tenth
    assert _decide(200, 0, 300, 300, capacity=400) == (500, "raise")  # room it has shown
    assert _decide(64, 0, 64, 10, saturated=False) == (64, "idle")  # not using its limit
    # A short queue keeps a full batch full (it ran 100 when it last kept a long queue).
    assert _decide(100, 8, 108, 108, capacity=100) == (108, "hold")
    # The same few waiting on a server with room are calls that arrived during this step.
    assert _decide(60, 5, 65, 65, capacity=100) == (105, "raise")
    assert _decide(60, 5, 65, 65, probing=True) == (130, "raise")
    assert _decide(100, 0, 100, 100, kv=0.97) == (100, "hold")  # KV cache nearly full
    limit, why = _decide(100, 60, 160, 160)  # queue past a tenth of the batch: cut its excess
    assert why == "lower (queue)" and limit == 160 - (60 - 5)
    # ... once it is seen twice: a queue in one reading may be calls that just arrived.
    assert _decide(100, 60, 160, 160, queue_before=False) == (160, "hold (queue seen once)")
    # Using half its limit, with half the server's requests: down to what it uses, less
    # its half of the excess. Two stages on one server are each cut by their share.
    assert _decide(100, 60, 160, 80) == (80 - 55 / 2, "lower (queue)")
    limit, why = _decide(100, 60, 100, 95)  # 95 of the server's 160 are ours: that share
    assert why == "lower (queue)" and limit == pytest.approx(95 - 55 * 95 / 160)
    # A cut still draining (more in flight than the new limit) is not cut again.
    assert _decide(100, 60, 105, 160) == (105, "hold (the last cut is draining)")
    # After the first climb, one reading with room alone does not raise.
    assert _decide(100, 0, 100, 100, room_before=False) == (100, "hold (room seen once)")
    # Answers taking most of the timeout: lower, whatever the queue; half of it: no raise.
    assert _decide(100, 0, 100, 100, latency_s=500) == (70, "lower (latency)")
    assert _decide(100, 0, 100, 100, latency_s=350)[1] == "hold (latency)"
    assert _decide(100, 0, 100, 100, latency_s=250) == (110, "raise")  # long, not too long
    assert _decide(100, 0, 100, 100, latency_s=500, latency_cut_ok=False)[0] == 100


# -- the pool following a server, over HTTP ---------------------------------------------


@pytest.mark.slow
def test_limit_rises_on_an_idle_server(sim_server):
    # Room for 1,000 sequences; each call decodes for minutes, so none ends during the test.
    server = _server(sim_server, max_num_seqs=1000, output_tokens=3000, step_ms=20)
    settings = FollowSettings(interval_s=HOUR, start=16, ceiling=128)

    async def go() -> list[tuple[str, float]]:
        async with Harness(server, settings) as h:
            await h.send(300, _body())
            assert h.ep.concurrency.limit == 16 and h.ep.concurrency.follows_server
            for _ in range(4):
                await h.poll()
            load = await h.seen()
            assert load.waiting == 0 and load.running == 128
            return h.decisions

    assert asyncio.run(go()) == [("raise", 32), ("raise", 64), ("raise", 128), ("raise", 128)]


@pytest.mark.slow
def test_limit_settles_while_a_small_queue_holds(sim_server):
    # The batch holds 40; past that, calls queue. Calls take about a second each and the
    # callers send again at once, so the queue is what the limit makes it.
    server = _server(sim_server, max_num_seqs=40, output_tokens=100, step_ms=10)
    settings = FollowSettings(interval_s=HOUR, start=16, ceiling=400)

    async def go() -> tuple[list[tuple[str, float]], ServerLoad]:
        async with Harness(server, settings) as h:
            await h.send(300, _body(), repeat=True)
            for _ in range(80):
                await h.poll(slack=10)
                last = h.decisions[-4:]
                if len(last) == 4 and {d for d, _ in last} == {"hold"}:
                    break
                await asyncio.sleep(0.1)  # pacing: let answers come back between readings
            return h.decisions, h.ep.follow.load

    decisions, load = asyncio.run(go())
    expected = ["raise", "raise", "hold (queue seen once)", "lower (queue)"]
    assert [d for d, _ in decisions[:4]] == expected, decisions
    settled = decisions[-4:]
    assert {d for d, _ in settled} == {"hold"}, decisions
    assert len({limit for _, limit in settled}) == 1  # it stays where it settled
    limit = settled[0][1]
    assert 40 < limit <= 40 + settings.min_queue  # the batch full, a short queue behind it
    assert load.running == 40 and 0 < load.waiting <= settings.min_queue


@pytest.mark.slow
def test_limit_falls_when_the_server_slows(sim_server):
    server = _server(sim_server, max_num_seqs=1000, output_tokens=10, step_ms=5)
    settings = FollowSettings(interval_s=HOUR, start=16, ceiling=64)

    async def go() -> tuple[list[str], float, float, str]:
        async with Harness(server, settings, timeout_s=8.0) as h:
            await h.send(100, _body(), repeat=True)
            for _ in range(3):
                await h.poll(slack=10)
            before = h.ep.concurrency.limit
            # The GPU slows down: ten tokens now take about seven seconds, most of the timeout.
            server.server.engine.config.step_ms = 640.0
            await _until(
                lambda: h.ep.stats.window_latency_max_s > settings.latency_high * 8.0,
                "a slow answer",
            )
            await h.pool.follower.poll_once()
            early = [d for d, _ in h.decisions]
            return early, before, h.ep.concurrency.limit, h.ep.follow.decision

    early, before, after, why = asyncio.run(go())
    assert not any(d.startswith("lower") for d in early) and before == 64
    assert why == "lower (latency)" and after < before


@pytest.mark.slow
def test_a_server_whose_metrics_vanish_is_ignored_with_one_warning(sim_server, caplog):
    server = _server(sim_server, max_num_seqs=100, output_tokens=2)
    settings = FollowSettings(interval_s=HOUR, start=16, ceiling=256, vanish_after=3)

    async def go() -> None:
        async with Harness(server, settings) as h:
            follower = h.pool.follower
            assert h.ep.follow is not None and h.ep.follow.active
            server.server.metrics_enabled = False  # /metrics now answers 404
            with caplog.at_level(logging.WARNING, logger="evaluator"):
                assert await follower.poll_once() and await follower.poll_once()
                assert h.ep.concurrency.follows_server  # two misses: still following
                assert not await follower.poll_once()  # the third: falls back, polling ends
                assert not await follower.poll_once()
            assert not h.ep.follow.active and not h.ep.concurrency.follows_server
            assert h.ep.concurrency.maximum == settings.fallback
            assert h.ep.concurrency.limit <= settings.fallback
            result = await h.pool.chat(_body())  # the endpoint itself still answers
            assert result.content

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert metrics_url(server.base_url) in warnings[0] and "fixed 64" in warnings[0]


@pytest.mark.slow
def test_endpoints_without_metrics_keep_the_fixed_cap(sim_server, caplog):
    plain = sim_server()  # no simulated GPU: /metrics is a 404, as on most APIs

    async def go(managed: bool) -> ServerFollow | None:
        settings = FollowSettings(interval_s=HOUR, managed=managed)
        pool = EndpointPool(
            [EndpointConfig(plain.base_url, concurrency=settings.ceiling, model="m")],
            PoolConfig(name="judge endpoint"),
            follow=settings,
        )
        async with pool:
            await pool.check()
            ep = pool.endpoints[0]
            assert pool.capacity == ep.concurrency.maximum == 64
            assert not ep.concurrency.follows_server
            return ep.follow

    with caplog.at_level(logging.INFO, logger="evaluator"):
        assert asyncio.run(go(managed=False)) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evaluator"):
        asyncio.run(go(managed=True))  # a server the evaluator started should publish them
    assert ["publishes no vLLM metrics" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.slow
def test_limits_and_server_figures_reach_prometheus_and_progress(sim_server):
    from evaluator.metrics.registry import RunMetrics
    from evaluator.run.stages import activity as stage_activity

    server = _server(sim_server, max_num_seqs=10, output_tokens=3000, step_ms=20)

    async def go():
        async with Harness(server, FollowSettings(interval_s=HOUR, start=16)) as h:
            metrics = RunMetrics()
            metrics.watch_pool("generation", h.pool)
            await h.send(40, _body())
            await h.poll()
            return metrics.exposition().decode(), stage_activity(h.pool, h.pool), h.ep.follow.load

    text, activity, load = asyncio.run(go())
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["valbench_concurrency_follows_server"] == 1
    assert samples["valbench_server_requests_running"] == load.running == 10
    assert samples["valbench_server_requests_waiting"] == load.waiting == 6
    assert samples["valbench_server_kv_cache_usage"] == load.kv_usage
    assert activity.limits is not None and activity.server_waiting == 6
    assert "server 10 run 6 wait" in activity.server_text()


# -- the evaluator with default settings ------------------------------------------------


@pytest.mark.slow
def test_run_with_default_settings_follows_the_server(tmp_path, synthetic, sim_process, capsys):
    sim = sim_process("--batching", "--max-num-seqs", "16", "--output-tokens", "4")
    data = synthetic(30)
    out = tmp_path / "out"
    assert run_eval(data, sim.base_url, out, "--judge-model", "j") == 0
    endpoints = read_summary(out)["last_session"]["endpoints"]
    for stage in ("generation", "judge"):
        (ep,) = endpoints[stage]
        assert ep["follows_server"] is True and ep["metrics_url"].endswith(
            ":" + _port(sim) + "/metrics"
        )
        assert ep["server_running"] is not None
    assert sim.stats()["gpu"]["metrics_scrapes"] >= 2  # detected by both stages
    capsys.readouterr()
    assert run_cli("status", out) == 0  # `status` says how each stage's concurrency ran
    printed = capsys.readouterr().out
    assert "generation concurrency (last session): follows 1 of 1 server(s)" in printed
    assert "judge concurrency (last session): follows 1 of 1 server(s)" in printed


@pytest.mark.slow
def test_explicit_concurrency_is_a_fixed_cap_and_reads_no_metrics(tmp_path, synthetic, sim_process):
    sim = sim_process("--batching", "--output-tokens", "4")
    out = tmp_path / "out"
    code = run_eval(
        synthetic(10),
        sim.base_url,
        out,
        "--judge-model",
        "j",
        "--concurrency",
        "3",
        "--judge-concurrency",
        "5",
    )
    assert code == 0
    endpoints = read_summary(out)["last_session"]["endpoints"]
    assert endpoints["generation"][0]["follows_server"] is False
    assert endpoints["generation"][0]["concurrency_limit"] <= 3
    assert endpoints["judge"][0]["concurrency_limit"] <= 5
    assert sim.stats()["gpu"]["metrics_scrapes"] == 0


def _port(sim) -> str:
    return sim.base_url.rsplit(":", 1)[1].split("/")[0]


def test_simulator_flags_build_the_gpu():
    from workers.simulated.__main__ import _batching, parse_args

    args = parse_args(
        [
            "--batching",
            "--max-num-seqs",
            "8",
            "--kv-cache-tokens",
            "1000",
            "--step-ms",
            "2",
            "--no-enable-prefix-caching",
            "--output-tokens",
            "7",
        ]
    )
    config = _batching(args)
    assert config == BatchingConfig(
        max_num_seqs=8, kv_cache_tokens=1000, step_ms=2.0, prefix_caching=False, output_tokens=7
    )
    assert _batching(parse_args([])) is None
    assert SimConfig().batching is None  # the plain simulator is unchanged
    with pytest.raises(ValueError):
        BatchingConfig(max_num_seqs=0)


@pytest.mark.slow
def test_engine_tasks_end_with_the_server():
    """Calls still queued when the server stops end at once (no shutdown wait)."""
    server = ThreadedServer(
        SimConfig(
            served_names=TEST_MODELS, batching=BatchingConfig(max_num_seqs=1, output_tokens=10**4)
        )
    )
    server.__enter__()

    async def go() -> None:
        async with AsyncExitStack() as stack:
            h = await stack.enter_async_context(
                Harness(server, FollowSettings(interval_s=HOUR, start=3, ceiling=3))
            )
            await h.send(3, _body(max_tokens=20000))
            await h.seen()

    asyncio.run(go())
    started = time.monotonic()
    server.__exit__(None, None, None)
    assert time.monotonic() - started < 30  # aiohttp's shutdown would wait 60 s for handlers


# -- deploy/gpu_check.py, with stand-ins for vllm ----------------------------------------

FAKE_VLLM = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[0] == "serve":  # the simulated GPU stands in for vllm serve
    port = args[args.index("--port") + 1]
    name = args[args.index("--served-model-name") + 1]
    os.execvp(sys.executable, [
        sys.executable, "-m", "workers.simulated", "--batching", "--port", port,
        "--served-model-name", name, "--output-tokens", "16", "--judge-output-tokens", "8",
    ])
# vllm bench serve: a result file of the fields gpu_check.py reads (fixed figures)
out = os.path.join(args[args.index("--result-dir") + 1], args[args.index("--result-filename") + 1])
with open(out, "w") as f:
    json.dump({"duration": 10.0, "completed": 90, "failed": 0, "request_throughput": 9.0,
               "output_throughput": 1000.0, "total_token_throughput": 5000.0}, f)
"""


@pytest.mark.slow
def test_gpu_check_runs_the_benchmark_then_the_evaluator_and_reports_the_share(tmp_path):
    fake = tmp_path / "fake_vllm.py"
    fake.write_text(FAKE_VLLM)
    log = tmp_path / "vllm-calls.jsonl"
    out = tmp_path / "check"
    env = {
        **os.environ,
        "VLLM": f"{sys.executable} {fake}",
        "FAKE_VLLM_LOG": str(log),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "gpu_check.py"), "sim-judge", "--pairs", "30",
         "--pilot-pairs", "5", "--out", str(out), "--", "--max-model-len", "8192"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    serve, bench = calls[0], calls[1]
    assert serve[:2] == ["serve", "sim-judge"] and "--enable-prefix-caching" in serve
    assert serve[-2:] == ["--max-model-len", "8192"]  # flags after -- reach vllm serve
    report = json.loads((out / "gpu-check.json").read_text())
    shape = report["request_shape"]
    pilot = report["pilot"]
    assert bench[:2] == ["bench", "serve"]
    for flag, value in (
        ("--backend", "openai-chat"),
        ("--endpoint", "/v1/chat/completions"),
        ("--dataset-name", "random"),
        ("--request-rate", "inf"),
        ("--num-prompts", "90"),  # as many requests as the evaluator's 30 pairs
        ("--random-input-len", str(round(pilot["mean_prompt_tokens"]))),
        ("--random-output-len", str(round(pilot["mean_output_tokens"]))),
    ):
        assert flag in bench and bench[bench.index(flag) + 1] == value, (flag, bench)
    assert "--ignore-eos" in bench and "--save-result" in bench
    assert shape["input_len"] == round(pilot["mean_prompt_tokens"])
    evaluator = report["evaluator_default_settings"]
    assert evaluator["calls"] == 90 and all(evaluator["follows_server"])
    assert report["share_output_tokens_per_s"] == pytest.approx(
        evaluator["output_tokens_per_s"] / 1000.0
    )
    assert f"{report['share_output_tokens_per_s']:.0%} of its output tokens/s" in done.stdout
    # The server was stopped: its port no longer answers.
    port = next(a for i, a in enumerate(serve) if serve[i - 1] == "--port")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
