"""The managed vLLM servers of a run: this benchmark's defaults for them, and their URLs.

workers/vllm_servers.py runs processes and knows nothing of VAL-Bench; the
sizes that fit this workload are chosen here, from the protocol's limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluator import protocol
from evaluator.config import RunConfig
from workers.server_settings import ServerSettings
from workers.vllm_servers import ServerFleet, ServerGroup

SERVER_LOG_DIR = "servers"  # under the run directory: {stage}-{i}.log and .pid

# Generation: a short prompt (system prompt + one question) and up to GEN_MAX_TOKENS out.
MODEL_DEFAULTS: dict[str, Any] = {"max_model_len": 2 * protocol.GEN_MAX_TOKENS}
# Judge: the rubric, the issue, two questions and two answers of up to ANSWER_CHAR_LIMIT
# characters each (~4 characters a token), plus JUDGE_MAX_TOKENS out: about 9K tokens.
# Its answers follow a JSON schema: "auto" lets vLLM pick its structured-output backend
# (xgrammar, falling back to guidance for schemas xgrammar cannot compile).
JUDGE_DEFAULTS: dict[str, Any] = {"max_model_len": 16384, "structured_output_backend": "auto"}


def settings(config: RunConfig, stage: str) -> ServerSettings | None:
    """The stage's ("model" or "judge") server settings, defaults filled in; None if unmanaged."""
    raw = config.vllm if stage == "model" else config.judge_vllm
    if raw is None:
        return None
    defaults = MODEL_DEFAULTS if stage == "model" else JUDGE_DEFAULTS
    return ServerSettings.from_dict({**defaults, **raw}, where=f"[{stage}.vllm]")


def fleet_for(
    config: RunConfig, run_dir: Path, on_failed: Callable[[BaseException], None] | None = None
) -> ServerFleet | None:
    """The servers the config asks for (not started yet), or None when it asks for none."""
    groups = []
    for stage, served in (("model", config.model), ("judge", config.judge_model)):
        s = settings(config, stage)
        if s is not None:
            groups.append(ServerGroup(stage, s, served, run_dir / SERVER_LOG_DIR, on_failed))
    return ServerFleet(groups) if groups else None


def with_server_urls(config: RunConfig, fleet: ServerFleet) -> RunConfig:
    """The config with the started servers as the stages' endpoints. A judge with neither
    servers nor URLs of its own uses the model's servers (as with --base-url alone)."""
    model, judge = fleet.group("model"), fleet.group("judge")
    base_url = model.urls if model is not None else config.base_url
    if judge is not None:
        judge_url = judge.urls
    else:
        judge_url = config.judge_base_url or base_url
    return dataclasses.replace(config, base_url=base_url, judge_base_url=judge_url)
