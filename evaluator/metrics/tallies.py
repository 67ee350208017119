"""The run's hot-path counts (attempts, latency, tokens, retries per stage and endpoint;
pairs by outcome) as plain numbers, updated by the pool through a StageObserver and turned
into Prometheus metric families only when scraped."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from workers.base import Completion

if TYPE_CHECKING:
    from workers.client import Attempt
    from workers.pool import Endpoint

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class EndpointTally:
    """One endpoint's counts in one stage (plain numbers: the hot path)."""


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


class Tallies:
    """The hot-path counts of a run: per (stage, endpoint) attempts, and pairs by outcome.
    A Prometheus collector: exported as metric families at scrape time."""

    def __init__(self) -> None:
        self._by_endpoint: dict[tuple[str, int], EndpointTally] = {}
        self._pairs: dict[str, int] = {}
        self.session_cost: Callable[[], dict[str, float]] = dict

    def tally(self, stage: str, ep: Endpoint) -> EndpointTally:
        key = (stage, id(ep))
        t = self._by_endpoint.get(key)
        if t is None:
            t = self._by_endpoint[key] = EndpointTally(stage, ep.name)
        return t

    def pair_finished(self, outcome: str) -> None:
        self._pairs[outcome] = self._pairs.get(outcome, 0) + 1

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
        for t in list(self._by_endpoint.values()):
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
        for outcome, n in list(self._pairs.items()):
            pairs.add_metric([outcome], n)
        cost = CounterMetricFamily(
            "valbench_estimated_cost_usd",
            "Estimated cost of this session's calls, from token usage and the price table",
            labels=["stage"],
        )
        for stage, usd in list(self.session_cost().items()):
            cost.add_metric(["generation" if stage == "gen" else "judge"], usd)
        yield from (started, finished, retries, limited, waited, latency, tin, tout, pairs, cost)


class StageObserver:
    """What an EndpointPool reports, turned into one stage's counts (cheap: plain arithmetic)."""

    def __init__(self, tallies: Tallies, stage: str) -> None:
        self.tallies = tallies
        self.stage = stage
        self._by_endpoint: dict[int, EndpointTally] = {}  # id(ep): one int key per call

    def _t(self, ep: Endpoint) -> EndpointTally:
        t = self._by_endpoint.get(id(ep))
        if t is None:
            t = self._by_endpoint[id(ep)] = self.tallies.tally(self.stage, ep)
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
