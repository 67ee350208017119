"""The throughput benchmark's scenarios, in the order they run (README: why each, targets).

Each is `scenario(bench, args, tmp) -> Section`: it starts its own servers through
`bench.children`, measures its clients through `bench`, and returns its part of the report.
"""

from __future__ import annotations

from ..harness.report import Scenario
from .full import scenario_full
from .latency import scenario_latency
from .pool import scenario_pool
from .ratelimit import scenario_ratelimit
from .zero import scenario_zero

SCENARIOS: dict[str, Scenario] = {
    "zero": scenario_zero,
    "latency": scenario_latency,
    "ratelimit": scenario_ratelimit,
    "pool": scenario_pool,
    "full": scenario_full,
}
SCENARIO_NAMES = tuple(SCENARIOS)
