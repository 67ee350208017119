"""What a vLLM server says about its own load, read from its Prometheus `/metrics` page.

vLLM serves `/metrics` at the server's root (not under `/v1`), without the API
key, in the Prometheus text format. The names read here are those of vLLM's V1
engine (vllm/v1/metrics/loggers.py; the "Production Metrics" page,
docs.vllm.ai/en/stable/usage/metrics/): the gauges `vllm:num_requests_running`,
`vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` (0..1; releases
before 0.9 named it `vllm:gpu_cache_usage_perc`), and the counters
`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
`vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total`. Each is
labelled by `model_name` and `engine`; a server with several engines (data
parallel) is summed, its KV usage taken as the fullest engine's.

Only the lines of those metrics are handed to prometheus_client's parser: a
vLLM page holds dozens of histograms that a poll twice a second does not need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ServerLoad", "metrics_url", "parse_load"]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
COUNTERS = {
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
}
_WANTED = (RUNNING, WAITING, *KV_USAGE, *COUNTERS)


@dataclass(slots=True)
class ServerLoad:
    """One reading of a server's load (counters are cumulative; None: not published)."""

    running: float
    waiting: float
    kv_usage: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    at: float = 0.0  # time.monotonic() of the reading


def metrics_url(base_url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000/metrics` (vLLM serves it at its root)."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/metrics"


def parse_load(text: str, now: float | None = None) -> ServerLoad | None:
    """The load in a `/metrics` page; None when the page has no vLLM scheduler gauges."""
    lines = [line for line in text.splitlines() if line.startswith(_WANTED)]
    sums: dict[str, float] = {}
    kv: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                name = sample.name
                if name in KV_USAGE:
                    kv[name] = max(kv.get(name, 0.0), float(sample.value))
                elif name in (RUNNING, WAITING) or name in COUNTERS:
                    sums[name] = sums.get(name, 0.0) + float(sample.value)
    except ValueError:  # not the Prometheus text format
        return None
    if RUNNING not in sums or WAITING not in sums:
        return None
    usage = next((kv[n] for n in KV_USAGE if n in kv), None)
    return ServerLoad(
        running=sums[RUNNING],
        waiting=sums[WAITING],
        kv_usage=usage,
        at=time.monotonic() if now is None else now,
        **{field: sums.get(name) for name, field in COUNTERS.items()},
    )
