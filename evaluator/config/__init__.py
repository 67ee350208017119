"""A run's configuration: every setting declared once (settings), RunConfig and its role
view (run_config), the one loader from a TOML file and flags (loader), API keys (keys)."""

from evaluator.config.keys import (
    DEFAULT_KEY_VARIABLES,
    load_dotenv,
    resolve_key,
    stage_key,
)
from evaluator.config.loader import JUDGE_ONLY_MODEL, load_overrides, load_run_config
from evaluator.config.run_config import (
    RETIRED_KEYS,
    ConfigError,
    RoleSettings,
    RunConfig,
    request_differences,
)
from evaluator.config.settings import (
    DEFAULT_JUDGE_MODEL,
    JUDGE_ORDERS,
    MAX_CONCURRENCY,
    MODES,
    PROTOCOL,
    REASONING_EFFORTS,
    REQUEST_SETTINGS,
    SETTINGS,
    Setting,
)

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "DEFAULT_KEY_VARIABLES",
    "JUDGE_ONLY_MODEL",
    "JUDGE_ORDERS",
    "MAX_CONCURRENCY",
    "MODES",
    "PROTOCOL",
    "REASONING_EFFORTS",
    "REQUEST_SETTINGS",
    "RETIRED_KEYS",
    "SETTINGS",
    "ConfigError",
    "RoleSettings",
    "RunConfig",
    "Setting",
    "load_dotenv",
    "load_overrides",
    "load_run_config",
    "request_differences",
    "resolve_key",
    "stage_key",
]
