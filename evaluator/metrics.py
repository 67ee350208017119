"""Prometheus metrics for a run: one registry per run (no global state), served over HTTP.

Names follow Prometheus conventions: a `valbench_` prefix, base units
(`_seconds`, tokens, USD), `_total` on counters, and low-cardinality labels
only (stage, endpoint URL, outcome or error class; never a pair id).

Counters are incremented where things happen (the pool calls the observer
methods below, the scheduler reports pairs, the store writer reports commits);
gauges that mirror live state (in flight, limits, queue depth) are read at
scrape time, so they cost nothing between scrapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from workers.base import Completion, redact_bytes

if TYPE_CHECKING:
    from evaluator.costs import CostMeter
    from workers.client import Attempt
    from workers.pool import Endpoint, EndpointPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class RunMetrics:
    """Every metric of one run, in its own registry."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        """`secrets`: the run's keys, removed from the page as it is served (labels hold
        URLs and model names, which are checked for keys at start; this is the last guard)."""
        self.secrets = secrets
        r = self.registry = CollectorRegistry(auto_describe=True)
        ep = ["stage", "endpoint"]
        self.info = Gauge(
            "valbench_run_info",
            "The run: model, judge, whether the backend is simulated (value 1)",
            ["model", "judge_model", "simulated"],
            registry=r,
        )
        self._run_cost = Gauge(
            "valbench_run_cost_usd",
            "Estimated cost of the whole run so far, earlier sessions included",
            ["stage"],
            registry=r,
        )
        self._projected = Gauge(
            "valbench_projected_cost_usd",
            "Projected cost of the whole run (cost per call so far x calls left; NaN if unknown)",
            registry=r,
        )
        self._budget = Gauge(
            "valbench_max_cost_usd",
            "The run's --max-cost budget (NaN if none)",
            registry=r,
        )
        self._reserved = Gauge(
            "valbench_cost_reserved_usd",
            "Worst-case cost reserved by the calls in flight (counted against --max-cost)",
            registry=r,
        )
        self.pairs_expected = Gauge(
            "valbench_pairs_expected",
            "Pairs this run will evaluate (for ETA; -1 if unknown)",
            registry=r,
        )
        self._remaining = Gauge(
            "valbench_pairs_remaining",
            "Pairs left to finish (for ETA; NaN if the dataset size is unknown)",
            registry=r,
        )
        self.commit_latency = Histogram(
            "valbench_checkpoint_commit_seconds",
            "Duration of one checkpoint transaction",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_lag = Gauge(
            "valbench_checkpoint_lag_seconds",
            "Age of the oldest outcome not yet committed when the last commit started",
            registry=r,
        )
        self.duplicated = Gauge(
            "valbench_possibly_duplicated_calls",
            "Calls started but unfinished when the run was last interrupted (possibly paid twice)",
            registry=r,
        )
        self.loop_lag = Gauge(
            "valbench_event_loop_lag_seconds", "Last measured event-loop lag", registry=r
        )
        self._in_flight = Gauge("valbench_requests_in_flight", "Calls in flight", ep, registry=r)
        self._limit = Gauge(
            "valbench_concurrency_limit",
            "Current concurrency limit (AIMD, or following the server's vLLM metrics)",
            ep,
            registry=r,
        )
        # Server-aware concurrency (workers/server_aware.py): the server's own figures as
        # last read from its vLLM /metrics; NaN where the limit does not follow a server.
        self._follows = Gauge(
            "valbench_concurrency_follows_server",
            "1 if the endpoint's limit follows its server's vLLM metrics, else 0",
            ep,
            registry=r,
        )
        self._server = {
            field: Gauge(name, doc, ep, registry=r)
            for field, name, doc in (
                (
                    "running",
                    "valbench_server_requests_running",
                    "Requests the endpoint's server is running (vllm:num_requests_running)",
                ),
                (
                    "waiting",
                    "valbench_server_requests_waiting",
                    "Requests queued at the endpoint's server (vllm:num_requests_waiting)",
                ),
                (
                    "kv_usage",
                    "valbench_server_kv_cache_usage",
                    "KV-cache usage of the endpoint's server, 0 to 1 (vllm:kv_cache_usage_perc)",
                ),
            )
        }
        self._tokens_available = Gauge(
            "valbench_limiter_available",
            "Units left in the endpoint's rate bucket",
            [*ep, "bucket"],
            registry=r,
        )
        self._queue = Gauge(
            "valbench_queue_depth", "Calls waiting for a worker", ["stage"], registry=r
        )
        # Hot-path counts are plain numbers, turned into metric families only when
        # scraped (_TallyCollector): a labelled prometheus_client child costs
        # microseconds per update, which at thousands of calls/s is several percent.
        self._tallies: dict[tuple[str, int], _EndpointTally] = {}
        self._pairs: dict[str, int] = {}
        self._session_cost: Callable[[], dict[str, float]] = dict
        r.register(_TallyCollector(self))
        self.expected: int | None = None

    # -- wiring ----------------------------------------------------------------
    def describe_run(self, model: str, judge_model: str, simulated: bool) -> None:
        self.info.labels(model, judge_model, str(simulated).lower()).set(1)

    def watch_session_cost(self, by_stage: Callable[[], dict[str, float]]) -> None:
        """This session's estimated cost per stage ("gen", "judge"), read at scrape time."""
        self._session_cost = by_stage

    def watch_cost(self, meter: CostMeter, expected_calls: Callable[[], dict]) -> None:
        """Run cost per stage, the projected total and the budget, read at scrape time."""
        for stage, label in (("gen", "generation"), ("judge", "judge")):
            self._run_cost.labels(label).set_function(lambda s=stage: meter.stages[s].usd)

        def projected() -> float:
            value = meter.projected(expected_calls())
            return float("nan") if value is None else value

        self._projected.set_function(projected)
        self._budget.set_function(lambda: float("nan") if meter.limit is None else meter.limit)
        self._reserved.set_function(lambda: meter.reserved)

    def watch_pool(self, stage: str, pool: EndpointPool) -> None:
        """Live gauges for a pool's endpoints, read at scrape time."""
        for ep in pool.endpoints:
            labels = (stage, ep.name)
            self._in_flight.labels(*labels).set_function(lambda ep=ep: ep.concurrency.inflight)
            self._limit.labels(*labels).set_function(lambda ep=ep: ep.concurrency.limit)
            self._follows.labels(*labels).set_function(
                lambda ep=ep: float(ep.follow is not None and ep.follow.active)
            )
            for field, gauge in self._server.items():
                gauge.labels(*labels).set_function(lambda ep=ep, f=field: _server_figure(ep, f))
            for bucket in ("requests", "tokens"):
                self._tokens_available.labels(*labels, bucket).set_function(
                    lambda ep=ep, b=bucket: _available(ep, b)
                )

    def set_expected(self, pairs: int | None) -> None:
        self.expected = pairs
        self.pairs_expected.set(-1 if pairs is None else pairs)

    def watch_finished(self, finished: Callable[[], int]) -> None:
        """Remaining pairs, live, from the scheduler's count of finished ones."""
        self._remaining.set_function(
            lambda: float("nan") if self.expected is None else self.expected - finished()
        )

    def watch_queue(self, stage: str, depth: Callable[[], int]) -> None:
        self._queue.labels(stage).set_function(depth)

    def _tally(self, stage: str, ep: Endpoint) -> _EndpointTally:
        key = (stage, id(ep))
        t = self._tallies.get(key)
        if t is None:
            t = self._tallies[key] = _EndpointTally(stage, ep.name)
        return t

    # -- the pool's observer interface -------------------------------------------
    def stage_observer(self, stage: str) -> _StageObserver:
        return _StageObserver(self, stage)

    # -- scheduler and store ---------------------------------------------------
    def pair_finished(self, outcome: str) -> None:
        self._pairs[outcome] = self._pairs.get(outcome, 0) + 1

    def commit(self, seconds: float, oldest_age_s: float) -> None:
        self.commit_latency.observe(seconds)
        self.commit_lag.set(oldest_age_s)

    def exposition(self) -> bytes:
        return redact_bytes(generate_latest(self.registry), self.secrets)


def _server_figure(ep: Endpoint, field: str) -> float:
    """A figure of the server's last reading, NaN when the limit does not follow it."""
    follow = ep.follow
    if follow is None or not follow.active or follow.load is None:
        return float("nan")
    value = getattr(follow.load, field)
    return float("nan") if value is None else float(value)


def _available(ep: Endpoint, bucket: str) -> float:
    limiter = ep.limits.bucket(bucket)
    if limiter is None:
        return float("nan")
    # aiolimiter has no public "level"; a read-only peek is enough for a gauge.
    level = getattr(limiter, "_level", 0.0)
    return max(0.0, limiter.max_rate - level)


class _EndpointTally:
    __slots__ = (
        "stage",
        "endpoint",
        "started",
        "finished",
        "retries",
        "http_429",
        "waited_s",
        "buckets",
        "latency_sum",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, stage: str, endpoint: str) -> None:
        self.stage, self.endpoint = stage, endpoint
        self.started = 0
        self.finished: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.http_429 = 0
        self.waited_s = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last is +Inf
        self.latency_sum = 0.0
        self.tokens_in = 0
        self.tokens_out = 0


class _TallyCollector:
    """Exports the tallies as Prometheus metric families at scrape time."""

    def __init__(self, metrics: RunMetrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []  # families are built per scrape; nothing to pre-register

    def collect(self):
        ep = ["stage", "endpoint"]
        started = CounterMetricFamily("valbench_requests_started", "HTTP attempts sent", labels=ep)
        finished = CounterMetricFamily(
            "valbench_requests_finished",
            "HTTP attempts finished, by outcome class",
            labels=[*ep, "outcome"],
        )
        retries = CounterMetricFamily(
            "valbench_retries",
            "Attempts retried, by the error class that caused it",
            labels=[*ep, "error_class"],
        )
        limited = CounterMetricFamily(
            "valbench_http_429", "Answers with HTTP 429 (rate limited)", labels=ep
        )
        waited = CounterMetricFamily(
            "valbench_retry_after_wait_seconds",
            "Seconds the endpoint was paused on the provider's word (Retry-After, reset headers)",
            labels=ep,
        )
        latency = HistogramMetricFamily(
            "valbench_request_duration_seconds", "Duration of one HTTP attempt", labels=ep
        )
        tin = CounterMetricFamily(
            "valbench_input_tokens", "Prompt tokens reported by the endpoints", labels=ep
        )
        tout = CounterMetricFamily(
            "valbench_output_tokens", "Completion tokens reported by the endpoints", labels=ep
        )
        for t in list(self.m._tallies.values()):
            labels = [t.stage, t.endpoint]
            started.add_metric(labels, t.started)
            for outcome, n in list(t.finished.items()):
                finished.add_metric([*labels, outcome], n)
            for cls, n in list(t.retries.items()):
                retries.add_metric([*labels, cls], n)
            limited.add_metric(labels, t.http_429)
            waited.add_metric(labels, t.waited_s)
            cumulative, running = [], 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), t.buckets, strict=True):
                running += n
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric(labels, cumulative, t.latency_sum)
            tin.add_metric(labels, t.tokens_in)
            tout.add_metric(labels, t.tokens_out)
        pairs = CounterMetricFamily(
            "valbench_pairs_finished",
            "Pairs finished in this session, by outcome",
            labels=["outcome"],
        )
        for outcome, n in list(self.m._pairs.items()):
            pairs.add_metric([outcome], n)
        cost = CounterMetricFamily(
            "valbench_estimated_cost_usd",
            "Estimated cost of this session's calls, from token usage and the price table",
            labels=["stage"],
        )
        for stage, usd in list(self.m._session_cost().items()):
            cost.add_metric(["generation" if stage == "gen" else "judge"], usd)
        yield from (started, finished, retries, limited, waited, latency, tin, tout, pairs, cost)


class _StageObserver:
    """What an EndpointPool reports, turned into one stage's counts (cheap: plain arithmetic)."""

    def __init__(self, metrics: RunMetrics, stage: str) -> None:
        self.m = metrics
        self.stage = stage
        self._by_endpoint: dict[int, _EndpointTally] = {}  # id(ep): one int key per call

    def _t(self, ep: Endpoint) -> _EndpointTally:
        t = self._by_endpoint.get(id(ep))
        if t is None:
            t = self._by_endpoint[id(ep)] = self.m._tally(self.stage, ep)
        return t

    def attempt_started(self, ep: Endpoint) -> None:
        self._t(ep).started += 1

    def attempt_finished(self, ep: Endpoint, outcome: Attempt) -> None:
        t = self._t(ep)
        result = outcome.result
        t.buckets[bisect.bisect_left(LATENCY_BUCKETS, result.latency_s)] += 1
        t.latency_sum += result.latency_s
        if isinstance(result, Completion):
            usage = result.usage
            if usage:
                t.tokens_in += usage.get("prompt_tokens") or 0
                t.tokens_out += usage.get("completion_tokens") or 0
            t.finished["ok"] = t.finished.get("ok", 0) + 1
            return
        label = result.error_class.value
        t.finished[label] = t.finished.get(label, 0) + 1
        if label == "rate_limit":
            t.http_429 += 1

    def retrying(self, ep: Endpoint, error_class: str, wait_s: float) -> None:
        t = self._t(ep)
        t.retries[error_class] = t.retries.get(error_class, 0) + 1
        if error_class == "rate_limit":
            t.waited_s += wait_s


async def start_server(metrics: RunMetrics, host: str, port: int) -> web.AppRunner:
    """Serve /metrics on the run's own event loop (closed with the run, on every path)."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
