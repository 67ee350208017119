"""Prometheus metrics for a run: one registry per run (no global state).

Names follow Prometheus conventions: a `valbench_` prefix, base units
(`_seconds`, tokens, USD), `_total` on counters, and low-cardinality labels
only (stage, endpoint URL, outcome or error class; never a pair id).

Counters are incremented where things happen (the pool calls the stage observer,
evaluator.metrics.tallies; the scheduler reports pairs, the store writer reports commits);
gauges that mirror live state (in flight, limits, queue depth) are read at
scrape time, so they cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from evaluator.metrics.tallies import StageObserver, Tallies
from workers.base import redact_bytes

if TYPE_CHECKING:
    from evaluator.costs import CostMeter
    from workers.pool import Endpoint, EndpointPool

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
        # scraped (evaluator.metrics.tallies): a labelled prometheus_client child costs
        # microseconds per update, which at thousands of calls/s is several percent.
        self._tallies = Tallies()
        r.register(self._tallies)
        self.expected: int | None = None

    # -- wiring ----------------------------------------------------------------
    def describe_run(self, model: str, judge_model: str, simulated: bool) -> None:
        self.info.labels(model, judge_model, str(simulated).lower()).set(1)

    def watch_session_cost(self, by_stage: Callable[[], dict[str, float]]) -> None:
        """This session's estimated cost per stage ("gen", "judge"), read at scrape time."""
        self._tallies.session_cost = by_stage

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

    # -- the pool's observer interface -------------------------------------------
    def stage_observer(self, stage: str) -> StageObserver:
        return StageObserver(self._tallies, stage)

    # -- scheduler and store ---------------------------------------------------
    def pair_finished(self, outcome: str) -> None:
        self._tallies.pair_finished(outcome)

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
