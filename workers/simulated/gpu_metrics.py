"""The simulated GPU's state (batching.py) published at GET /metrics under vLLM's own
metric names and types, so that clients that read a real vLLM's metrics read these."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workers.simulated.batching import BatchingEngine


class MetricsCollector(Collector):
    """The engine's state as vLLM's Prometheus metrics, built at scrape time.

    Names, types and labels (`model_name`, `engine`) follow vLLM's V1 metrics
    (vllm/v1/metrics/loggers.py, PrometheusStatLogger; the "Production Metrics"
    page, docs.vllm.ai/en/stable/usage/metrics/): gauges
    `vllm:num_requests_running`, `vllm:num_requests_waiting`,
    `vllm:kv_cache_usage_perc` (0..1; releases before 0.9 called it
    `vllm:gpu_cache_usage_perc`); counters `vllm:prompt_tokens`,
    `vllm:generation_tokens`, `vllm:prefix_cache_queries`,
    `vllm:prefix_cache_hits` (in tokens), `vllm:num_preemptions` and
    `vllm:request_success` (by `finished_reason`), each exposed with the
    `_total` suffix prometheus_client adds to counters.
    """

    def __init__(self, engine: BatchingEngine, model_name: str) -> None:
        self.engine = engine
        self.labels = [model_name, "0"]

    def collect(self):
        e = self.engine
        names = ["model_name", "engine"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(self.labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(self.labels, value)
            return c

        yield gauge(
            "vllm:num_requests_running", "Requests in the running batch (SIMULATED GPU).", e.running
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Requests queued for the batch (SIMULATED GPU).",
            len(e.waiting),
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "Share of the KV cache in use, 0 to 1 (SIMULATED GPU).",
            e.kv_usage,
        )
        yield counter(
            "vllm:prompt_tokens",
            "Prompt tokens of the requests started (SIMULATED GPU).",
            e.prompt_tokens_total,
        )
        yield counter(
            "vllm:generation_tokens", "Tokens generated (SIMULATED GPU).", e.generation_tokens_total
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (SIMULATED GPU).",
            e.prefix_queries_total,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache (SIMULATED GPU).",
            e.prefix_hits_total,
        )
        yield counter(
            "vllm:num_preemptions",
            "Sequences preempted; the simulator never preempts (SIMULATED GPU).",
            0,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Requests finished, by reason (SIMULATED GPU).",
            labels=[*names, "finished_reason"],
        )
        success.add_metric([*self.labels, "stop"], e.requests_total)
        yield success
