"""A run's two stages, generation and judge, as one type.

A `Stage` is named "gen" or "judge" (the names the checkpoint, the cost meter and the
preflight use; `label` is the word outputs and metrics show). It owns the stage's transport
(an online EndpointPool, a provider's Batch API, or nothing for a judge-only run's
generation), the limits it was built with, and its share of the run's cost meter. The
session builds both with `build_stages` and treats them alike.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from evaluator.batch.settings import BatchSettings
from evaluator.batch.stage import BatchStage
from evaluator.config import RoleSettings, RunConfig, stage_key
from evaluator.progress import Activity
from evaluator.run.stage_client import NoGeneration
from evaluator.store import Store, StoreWriter
from workers.base import RetryBudget
from workers.batch import batch_api_for
from workers.endpoint import LimitsRegistry
from workers.follow_policy import FollowSettings
from workers.openai_compat import EndpointConfig
from workers.pool import EndpointPool, PoolConfig
from workers.vllm_servers import ServerFleet

if TYPE_CHECKING:
    from evaluator.costs import CostMeter, Price, StageCost
    from evaluator.metrics.registry import RunMetrics

log = logging.getLogger("evaluator")

StageName = Literal["gen", "judge"]
STAGES: tuple[StageName, ...] = ("gen", "judge")
LABELS: dict[StageName, str] = {"gen": "generation", "judge": "judge"}  # summary.json, metrics
WHO: dict[StageName, str] = {"gen": "model", "judge": "judge"}  # endpoint names, log lines

Client = EndpointPool | BatchStage | NoGeneration


def field_name(stage: StageName, name: str) -> str:
    """The flat RunConfig field holding a stage's own setting: the judge's carry `judge_`."""
    return name if stage == "gen" else f"judge_{name}"


def role(config: RunConfig, stage: StageName) -> RoleSettings:
    """A stage's own settings (provider, model, endpoints, limits, mode, key variable, ...):
    the config's typed view of the role the stage plays."""
    return config.role(WHO[stage])


def stage_keys(
    config: RunConfig, dotenv: dict[str, str]
) -> dict[StageName, tuple[str | None, str | None]]:
    """Each stage's (API key, the variable it came from)."""
    return {
        s: stage_key(
            role(config, s).api_key_env,
            role(config, s).provider,
            role(config, s).base_url,
            dotenv,
        )
        for s in STAGES
    }


@dataclass(frozen=True, slots=True)
class Limits:
    """A stage's caps, applied to each of its endpoints. `concurrency` None: endpoints whose
    servers publish vLLM metrics follow their load."""

    concurrency: int | None
    rpm: float | None
    tpm: float | None

    @classmethod
    def of(cls, config: RunConfig, stage: StageName) -> Limits:
        r = role(config, stage)
        return cls(r.concurrency, r.rpm, r.tpm)


@dataclass
class Stage:
    name: StageName
    client: Client
    limits: Limits
    key: str | None = None  # the stage's API key (a batch stage's preflight client uses it)
    meter: StageCost | None = None  # this stage's part of the run's CostMeter
    price: Price | None = None  # the stage's model's price (None: unknown)

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def batched(self) -> bool:
        return isinstance(self.client, BatchStage)

    def charge(self, usage: dict[str, Any], *, probe: bool = False) -> None:
        """Count a call's usage in the stage's cost (the scheduler's calls are counted by the
        CostMeter itself; this is for the start-up test calls)."""
        if self.meter is not None:
            self.meter.add(usage, self.price, probe=probe)

    async def start(self, writer: StoreWriter) -> None:
        """A batch stage re-attaches to this run's earlier batches, then starts batching."""
        if isinstance(self.client, BatchStage):
            await self.client.start(writer)

    async def stop(self) -> None:
        """A batch stage stops submitting; what is at the provider stays recorded."""
        if isinstance(self.client, BatchStage):
            await self.client.close()

    def watch(self, metrics: RunMetrics) -> None:
        """Report this stage's calls and endpoints to the Prometheus metrics."""
        self.client.observer = metrics.stage_observer(self.label)
        metrics.watch_pool(self.label, self.client)

    def endpoint_summary(self) -> list[dict[str, Any]]:
        """How each endpoint behaved this session (summary.json `last_session`)."""
        return [
            {
                "base_url": ep.name,
                "sent": ep.stats.sent,
                "ok": ep.stats.ok,
                "rate_limited": ep.stats.rate_limited,
                "transient": ep.stats.transient,
                "connection_failures": ep.stats.connection_failures,
                "concurrency_limit": round(ep.concurrency.limit, 2),
                "concurrency_cuts": ep.concurrency.cuts,
                "rpm": ep.limits.rpm,
                "tpm": ep.limits.tpm,
                "healthy": ep.healthy,
                # Server-aware concurrency: whether the limit followed the server's
                # vLLM metrics, and the server's last figures (for `status`).
                **(ep.follow.summary() if ep.follow else {"follows_server": False}),
            }
            for ep in self.client.endpoints
        ]


def build_stages(
    config: RunConfig,
    store: Store,
    keys: dict[StageName, str | None],
    fleet: ServerFleet | None,
    cost: CostMeter | None,
) -> list[Stage]:
    """Both stages, not yet entered: a judge-only run's generation sends nothing; a stage
    in batch mode talks to its provider's Batch API; any other has a pool of endpoints."""
    budget = RetryBudget(config.retry_budget)
    # Every key of the run: each stage's clients keep both out of what they return.
    secrets = tuple(k for k in keys.values() if k)
    # Stages sending one model to one endpoint with one key share its rate limits.
    shared: LimitsRegistry = {}
    stages = []
    for name in STAGES:
        limits = Limits.of(config, name)
        client: Client
        if name == "gen" and config.judge_only:
            client = NoGeneration()
        elif role(config, name).mode == "batch":
            client = _batch_client(name, config, store, keys[name], budget, secrets)
        else:
            managed = _managed(role(config, name).base_url, fleet)
            client = _pool(name, config, keys[name], limits, budget, shared, secrets, managed)
        meter, price = (
            (cost.stages[name], cost.prices.get(name)) if cost is not None else (None, None)
        )
        stages.append(Stage(name, client, limits, keys[name], meter, price))
    return stages


def _pool(
    stage: StageName,
    config: RunConfig,
    key: str | None,
    limits: Limits,
    budget: RetryBudget,
    shared: LimitsRegistry,
    secrets: tuple[str, ...],
    managed: bool,
) -> EndpointPool:
    """One stage's endpoints; caps and rate limits apply to each endpoint. `secrets`: every
    key of the run, kept out of this stage's answers and messages.

    No concurrency given: endpoints whose servers publish vLLM metrics follow their
    load (`managed`: the evaluator started them, so a missing page is worth a warning);
    a number is a fixed cap, as it always was."""
    follow = None
    concurrency = limits.concurrency
    if concurrency is None:
        follow = FollowSettings(managed=managed)
        concurrency = follow.ceiling
    name = f"{WHO[stage]} endpoint"
    endpoints = [
        EndpointConfig(
            base_url=url,
            api_key=key,
            name=name,
            concurrency=concurrency,
            rpm=limits.rpm,
            tpm=limits.tpm,
            timeout_s=config.timeout_s,
            provider=role(config, stage).provider,
            model=role(config, stage).model,
            ca_bundle=config.ca_bundle,
            max_response_bytes=int(config.max_response_mb * 1024 * 1024),
            secrets=secrets,
        )
        for url in role(config, stage).base_url
    ]
    return EndpointPool(
        endpoints,
        PoolConfig(
            name=name,
            max_attempts=config.max_attempts,
            backoff_base_s=config.backoff_base_s,
            retry_budget=budget,
            max_retry_wait_s=config.max_retry_wait_s,
        ),
        shared,
        follow=follow,
    )


def _managed(urls: list[str], fleet: ServerFleet | None) -> bool:
    """Whether every URL of a stage is a server the evaluator started (vLLM: it has metrics)."""
    started = {url for group in fleet.groups for url in group.urls} if fleet is not None else set()
    return bool(urls) and set(urls) <= started


def _batch_client(
    stage: StageName,
    config: RunConfig,
    store: Store,
    key: str | None,
    budget: RetryBudget,
    secrets: tuple[str, ...],
) -> BatchStage:
    """A stage in batch mode: the provider's Batch API at the stage's (single) endpoint."""
    api = batch_api_for(
        role(config, stage).provider,
        role(config, stage).base_url[0],
        key,
        name=f"{WHO[stage]} batch endpoint",
        backoff_base_s=config.backoff_base_s,
        timeout_s=config.timeout_s,
        ca_bundle=config.ca_bundle,
        max_retry_wait_s=config.max_retry_wait_s,
        secrets=secrets,
    )
    max_requests = min(config.batch_max_requests or api.max_requests, api.max_requests)
    max_bytes = api.max_bytes
    if config.batch_max_mb is not None:
        max_bytes = min(max_bytes, int(config.batch_max_mb * 1024 * 1024))
    settings = BatchSettings(
        max_requests=max_requests,
        max_bytes=max_bytes,
        capacity=config.batch_capacity,
        window_s=config.batch_window_s,
        idle_s=config.batch_idle_s,
        poll_s=config.batch_poll_s,
        max_attempts=config.max_attempts,
        budget=budget,
    )
    return BatchStage(api, stage, store, settings)


def batch_modes(config: RunConfig, store: Store) -> RunConfig:
    """A stage with batches still owing results is re-attached in batch mode, whatever the
    mode asked for now: sending those calls online would pay for them twice."""
    for stage in STAGES:
        if role(config, stage).mode == "batch":
            continue
        owing = [r for r in store.open_batches(stage) if store.batch_unsettled(r.id)]
        if owing:
            log.warning(
                "%d %s batch(es) of this run still owe results: the %s stage stays in batch "
                "mode until they are read",
                len(owing),
                owing[0].provider,
                LABELS[stage],
            )
            config = dataclasses.replace(config, **{field_name(stage, "mode"): "batch"})
    return config


def activity(*clients: Client) -> Activity:
    """Retries and rate-limit waits across the stages' endpoints (gen's first), and the
    limits and servers' figures where endpoints follow their servers, for the progress
    display."""
    out = Activity()
    limits: dict[str, int] = {}
    servers = {}
    for stage, client in zip(STAGES, clients, strict=False):
        for ep in client.endpoints:
            st = ep.stats
            out.retries += st.transient + st.connection_failures + st.rate_limited
            out.rate_limited += st.rate_limited
            out.waiting_s = max(out.waiting_s, ep.limits.paused_for)
            follow = ep.follow
            if follow is not None and follow.active and follow.load is not None:
                limits[stage] = limits.get(stage, 0) + int(ep.concurrency.limit)
                servers[follow.url] = follow.load  # a server both stages use counts once
    if limits:
        out.limits = limits
        loads = list(servers.values())
        out.server_running = sum(x.running for x in loads)
        out.server_waiting = sum(x.waiting for x in loads)
        kv = [x.kv_usage for x in loads if x.kv_usage is not None]
        out.server_kv = max(kv) if kv else None
    return out
