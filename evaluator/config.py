"""The run config, the settings that guard --resume, and API keys from the environment or `.env`."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evaluator import protocol
from evaluator.breaker import DEFAULT_MAX_FAILURES, BreakerRules, BreakerSettingError

# Settings that change what is sent: resuming with a different value would mix
# two different experiments in one run, so it is refused.
REQUEST_SETTINGS = (
    "data",
    "split",
    "model",
    "judge_model",
    "system_prompt",
    "judge_prompt",
    "judge_schema",  # the judge's response format (the paper protocol takes the authors')
    "judge_order",
    "protocol",
    "shard",  # another shard is another set of pairs: a different run
    # The wire format and its options change the request bodies, hence the content keys.
    "provider",
    "judge_provider",
    "reasoning_effort",
    "judge_reasoning_effort",
    "thinking_budget",
    "judge_thinking_budget",
    "web_search",
    "judge_web_search",
)
# Config keys of earlier versions that no longer mean anything; dropped when a stored
# config is read so that older checkpoints still resume.
RETIRED_KEYS = ("http_processes",)
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
JUDGE_ORDERS = ("forward", "reverse", "both")
MODES = ("online", "batch")
PROTOCOL = (
    f"gen:t={protocol.GEN_TEMPERATURE},p={protocol.GEN_TOP_P},max={protocol.GEN_MAX_TOKENS};"
    f"judge:t={protocol.JUDGE_TEMPERATURE},p={protocol.JUDGE_TOP_P},max={protocol.JUDGE_MAX_TOKENS};"
    f"cut={protocol.ANSWER_CHAR_LIMIT}"
)


DEFAULT_JUDGE_MODEL = "google/gemma-3-27b-it"  # spec §3's default judge


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


@dataclass(slots=True)
class RunConfig:
    data: str
    model: str
    base_url: list[str]  # one or more endpoints serving `model` (a pool)
    judge_base_url: list[str]
    judge_model: str = DEFAULT_JUDGE_MODEL
    split: str = "test"
    limit: int | None = None
    api_key_env: str | None = None
    judge_api_key_env: str | None = None
    # Wire format per stage (workers.providers): "openai" (chat completions; vLLM and other
    # compatible servers), "openai-responses", "anthropic"; and their options.
    provider: str = "openai"
    judge_provider: str = "openai"
    reasoning_effort: str | None = None  # Responses reasoning.effort / chat reasoning_effort
    judge_reasoning_effort: str | None = None
    thinking_budget: int | None = None  # Anthropic thinking budget_tokens
    judge_thinking_budget: int | None = None
    web_search: bool = False  # the provider's web search tool
    judge_web_search: bool = False
    system_prompt: str = protocol.DEFAULT_SYSTEM_PROMPT
    judge_prompt: str = protocol.DEFAULT_JUDGE_PROMPT
    # Where the prompts came from (evaluator.identity): "builtin" | "paper" | "file:PATH", and
    # "spec" | "file:PATH". The texts above are what is sent; these only label them.
    judge_prompt_source: str = "builtin"
    system_prompt_source: str = "spec"
    # The judge's response schema; None: protocol.VERDICT_SCHEMA. The paper protocol uses the
    # authors' OUTPUT_JSON_SCHEMA (evaluator.paper_prompt).
    judge_schema: dict[str, Any] | None = None
    # The dataset holds the answers (for_response / against_response): no generation call
    # is made and those answers are judged. Set by the run when it sees the columns; asked
    # for with --judge-only, a dataset without them is an error.
    judge_only: bool = False
    judge_order: str = "forward"
    # Calls in flight per endpoint. None (the default): follow the server's load where it
    # publishes vLLM metrics (workers/server_aware.py), else a cap of 64 with AIMD. A
    # number: that fixed cap, with AIMD below it, whatever the server publishes.
    concurrency: int | None = None
    judge_concurrency: int | None = None
    rpm: float | None = None
    judge_rpm: float | None = None
    tpm: float | None = None
    judge_tpm: float | None = None
    timeout_s: float = 600.0
    # A server asking to wait longer than this (Retry-After, a rate-limit reset) stops the run
    # (exit 9, resumable) instead of holding it; see workers.pool for the default's reasons.
    max_retry_wait_s: float = 300.0
    # An answer body larger than this is not read: the call fails (response_too_large, final);
    # see workers.client for the default's reasons.
    max_response_mb: float = 4.0
    # PEM file of CA certificates trusted besides the system's, for https endpoints signed
    # by a private CA (an enterprise gateway). How calls travel, not what they ask: it may
    # change on --resume.
    ca_bundle: str | None = None
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    retry_budget: int | None = None  # retries for the whole run; None: unlimited
    judge_retries: int = 2
    # USD per million tokens, for cost estimates (progress, metrics, summary); None: unknown.
    price_in: float | None = None
    price_out: float | None = None
    judge_price_in: float | None = None
    judge_price_out: float | None = None
    reuse: list[str] = field(default_factory=list)  # earlier run directories to take answers from
    shard: str | None = None  # "I/N": only the pairs of shard I of N (evaluator/sharding.py)
    # Managed vLLM servers for the model and for the judge (workers/vllm_servers.py):
    # the settings of `[model.vllm]` / `[judge.vllm]`; their URLs become the stage's pool.
    vllm: dict[str, Any] | None = None
    judge_vllm: dict[str, Any] | None = None
    prices: str | None = None  # a price table (TOML) replacing the bundled one; see evaluator.costs
    max_cost: float | None = None  # USD: stop before the run's estimated cost would exceed it
    # How each stage's calls are sent: "online" (one HTTP request each) or "batch" (the
    # provider's Batch API: cheaper, answers within hours). See evaluator.batch_stage.
    mode: str = "online"
    judge_mode: str = "online"
    batch_max_requests: int | None = None  # per batch; None: the provider's limit
    batch_max_mb: float | None = None  # per batch; None: the provider's limit
    batch_capacity: int = 10_000  # a batch stage's calls waiting at once (in all its batches)
    batch_window_s: float = 300.0  # the longest a call waits before its batch is submitted
    batch_idle_s: float = 10.0  # submit the open batch once no call has come for this long
    batch_poll_s: float = 30.0  # seconds between status polls of a submitted batch
    # The circuit breaker (evaluator/breaker.py): N failures in a row, P% of the last 200.
    max_failures: str = DEFAULT_MAX_FAILURES
    simulated: bool = False
    protocol: str = PROTOCOL

    def __post_init__(self) -> None:
        # Older configs and single-endpoint callers give one URL as a string.
        if isinstance(self.base_url, str):
            self.base_url = [self.base_url]
        if isinstance(self.judge_base_url, str):
            self.judge_base_url = [self.judge_base_url]

    def validate(self) -> None:
        if self.judge_order not in JUDGE_ORDERS:
            raise ConfigError(f"--judge-order must be one of {', '.join(JUDGE_ORDERS)}")
        _validate_numbers(self)
        for flag, urls in (("--base-url", self.base_url), ("--judge-base-url", self.judge_base_url)):
            for url in urls:
                _check_url_secrets(flag, url)
        try:
            BreakerRules.parse(self.max_failures)
        except BreakerSettingError as exc:
            raise ConfigError(str(exc)) from None
        if self.ca_bundle is not None:
            from workers.client import tls_context

            try:
                tls_context(self.ca_bundle)
            except OSError as exc:  # ssl.SSLError too: not PEM, or no certificate in it
                raise ConfigError(
                    f"--ca-bundle {self.ca_bundle}: not a readable PEM file of CA "
                    f"certificates ({exc})"
                ) from None
        if self.shard is not None:
            from evaluator.sharding import ShardError, parse_shard

            try:
                parse_shard(self.shard)
            except ShardError as exc:
                raise ConfigError(str(exc)) from None
        self._validate_servers()
        for name, managed, flag in (
            ("base_url", self.vllm, "--vllm"),
            ("judge_base_url", self.judge_vllm, "--judge-vllm"),
        ):
            if managed is not None and getattr(self, name):
                raise ConfigError(
                    f"give --{name.replace('_', '-')} or {flag} (managed servers), not both"
                )
        self._validate_providers()
        for name in ("mode", "judge_mode"):
            if getattr(self, name) not in MODES:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(MODES)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name, urls in (("mode", self.base_url), ("judge_mode", self.judge_base_url)):
            if getattr(self, name) == "batch" and len(urls) > 1:
                flag = "--base-url" if name == "mode" else "--judge-base-url"
                raise ConfigError(f"batch mode takes one {flag}, got {len(urls)}")
        for name, managed in (("base_url", self.vllm), ("judge_base_url", self.judge_vllm)):
            urls = getattr(self, name)
            if name == "base_url" and self.judge_only:
                continue  # nothing is generated: the model's endpoint is not used
            if not urls and managed is None and not (name == "judge_base_url" and self.vllm):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
            for url in urls:
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise ConfigError(
                        f"--{name.replace('_', '-')} must be an http(s) URL, got {url!r}"
                    )

    def _validate_servers(self) -> None:
        from workers.vllm_servers import ServerSettings, ServerSettingsError

        for name, flag in (("vllm", "model"), ("judge_vllm", "judge")):
            raw = getattr(self, name)
            if raw is None:
                continue
            try:
                ServerSettings.from_dict(raw, where=f"[{flag}.vllm]")
            except ServerSettingsError as exc:
                raise ConfigError(str(exc)) from None

    def _validate_providers(self) -> None:
        from workers.providers import OPTIONS_BY_PROVIDER

        for prefix in ("", "judge_"):
            flag = "--" + prefix.replace("_", "-")
            provider = getattr(self, f"{prefix}provider")
            if provider not in OPTIONS_BY_PROVIDER:
                raise ConfigError(
                    f"{flag}provider must be one of {', '.join(OPTIONS_BY_PROVIDER)}, "
                    f"got {provider!r}"
                )
            for option in ("reasoning_effort", "thinking_budget", "web_search"):
                value = getattr(self, prefix + option)
                if value not in (None, False) and option not in OPTIONS_BY_PROVIDER[provider]:
                    raise ConfigError(
                        f"{flag}{option.replace('_', '-')} is not an option of provider "
                        f"{provider!r} (it takes: "
                        f"{', '.join(sorted(OPTIONS_BY_PROVIDER[provider]))})"
                    )
            effort = getattr(self, prefix + "reasoning_effort")
            if effort is not None and effort not in REASONING_EFFORTS:
                raise ConfigError(
                    f"{flag}reasoning-effort must be one of {', '.join(REASONING_EFFORTS)}"
                )
            budget = getattr(self, prefix + "thinking_budget")
            if budget is not None and (isinstance(budget, bool) or budget < 1024):
                raise ConfigError(
                    f"{flag}thinking-budget must be at least 1024 tokens (the API's minimum)"
                )

    def stage_options(self, stage: str) -> dict[str, Any]:
        """The provider options of a stage ("gen" or "judge"), as workers.providers takes them."""
        prefix = "judge_" if stage == "judge" else ""
        out = {
            name: getattr(self, prefix + name)
            for name in ("reasoning_effort", "thinking_budget", "web_search")
        }
        return {k: v for k, v in out.items() if v not in (None, False)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        # `http_processes` (helper processes for HTTP) was removed; checkpoints written
        # before then store it, and how calls are sent never changed what a run asks.
        data = {k: v for k, v in data.items() if k not in RETIRED_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    @property
    def judge_orders(self) -> tuple[str, ...]:
        return ("forward", "reverse") if self.judge_order == "both" else (self.judge_order,)


def _flag(name: str) -> str:
    """The command-line flag of a config field (`batch_window_s` -> `batch-window`)."""
    return name.removesuffix("_s").replace("_", "-")


# The most calls in flight per stage and endpoint: one worker task and one pooled
# connection each; beyond this one event loop spends its time on bookkeeping, and a typo
# (an extra zero or three) would otherwise start millions of tasks.
MAX_CONCURRENCY = 100_000
_FOREVER = 10**9  # a bound no sensible count reaches, and that SQLite and JSON hold

# Every numeric setting: (kind, lowest, highest, what it is). Kind "int" takes integers,
# "number" any finite number (TOML and argparse both accept nan and inf); the bounds are
# inclusive unless the lowest is written as ("above", x). None values mean "not set".
NUMERIC_SETTINGS: dict[str, tuple[str, Any, float, str]] = {
    "limit": ("int", 1, _FOREVER, "pairs"),
    "concurrency": ("int", 1, MAX_CONCURRENCY, "calls in flight"),
    "judge_concurrency": ("int", 1, MAX_CONCURRENCY, "calls in flight"),
    "max_attempts": ("int", 1, 1000, "tries per call"),
    "retry_budget": ("int", 0, _FOREVER, "retries"),
    "judge_retries": ("int", 0, 100, "re-asks"),
    "rpm": ("number", ("above", 0), _FOREVER, "requests per minute; 0.5 is one every 2 minutes"),
    "judge_rpm": ("number", ("above", 0), _FOREVER, "requests per minute"),
    "tpm": ("number", ("above", 0), _FOREVER, "tokens per minute"),
    "judge_tpm": ("number", ("above", 0), _FOREVER, "tokens per minute"),
    "timeout_s": ("number", ("above", 0), 7 * 86400, "seconds"),
    "max_retry_wait_s": ("number", 0, 7 * 86400, "seconds"),
    "max_response_mb": ("number", ("above", 0), 4096, "MB"),
    "backoff_base_s": ("number", 0, 3600, "seconds"),
    "price_in": ("number", 0, _FOREVER, "USD per million tokens"),
    "price_out": ("number", 0, _FOREVER, "USD per million tokens"),
    "judge_price_in": ("number", 0, _FOREVER, "USD per million tokens"),
    "judge_price_out": ("number", 0, _FOREVER, "USD per million tokens"),
    "max_cost": ("number", ("above", 0), _FOREVER, "USD"),
    "batch_max_requests": ("int", 1, _FOREVER, "requests"),
    "batch_capacity": ("int", 1, _FOREVER, "calls"),
    "batch_max_mb": ("number", ("above", 0), _FOREVER, "MB"),
    "batch_window_s": ("number", ("above", 0), 7 * 86400, "seconds"),
    "batch_idle_s": ("number", ("above", 0), 7 * 86400, "seconds"),
    "batch_poll_s": ("number", ("above", 0), 86400, "seconds"),
}


def _validate_numbers(config: RunConfig) -> None:
    """One line naming the flag, the value and what it must be, for every numeric setting."""
    for name, (kind, low, high, unit) in NUMERIC_SETTINGS.items():
        value = getattr(config, name)
        if value is None:
            continue
        strict = isinstance(low, tuple)
        bound = low[1] if strict else low
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = is_int or (isinstance(value, float) and math.isfinite(value))
        ok = (is_int if kind == "int" else is_number) and (
            (value > bound if strict else value >= bound) and value <= high
        )
        if not ok:
            what = "an integer" if kind == "int" else "a number"
            above = f"above {bound:g}" if strict else f"at least {bound:g}"
            raise ConfigError(
                f"--{_flag(name)} must be {above} and at most {high:,.0f} ({what}: {unit}), "
                f"got {value!r}"
            )


def _check_url_secrets(flag: str, url: Any) -> None:
    """A base URL never carries a secret: it is stored in the checkpoint and summary.json,
    logged, and a label of every metric. A user name or password in it (user:key@host) is
    refused; the message names the host, never what was before the @."""
    if not isinstance(url, str):
        return  # the URL checks in validate() name a URL that is not a string
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return
    if "@" in parts.netloc or ("@" in url and not parts.netloc):
        where = f"{parts.scheme}://{host or '?'}" + (f":{parts.port}" if _port(parts) else "")
        raise ConfigError(
            f"{flag} ({where}/...) holds a user name or password before its host; keys "
            "are never put in URLs (they would be stored, logged and shown in metrics): "
            "remove it, put the key in an environment variable or .env, and name that "
            "variable with --api-key-env / --judge-api-key-env"
        )


def _port(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def request_differences(stored: RunConfig, new: RunConfig) -> list[str]:
    """Names (with both values, shortened) of request-changing settings that differ."""
    from evaluator.identity import describe_prompt

    out = []
    for name in REQUEST_SETTINGS:
        a, b = getattr(stored, name), getattr(new, name)
        if a != b:
            if name in ("judge_prompt", "system_prompt"):
                # A prompt is named by where it came from and its hash, not by its text.
                a, b = describe_prompt(stored, name), describe_prompt(new, name)
                out.append(f"{name}: run has {a}, now {b}")
            else:
                out.append(f"{name}: run has {_short(a)}, now {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def load_dotenv(path: Path = Path(".env")) -> dict[str, str]:
    """KEY=VALUE lines from a `.env` file; existing environment variables win.

    Written here rather than depending on python-dotenv: the format we accept is
    ten lines of code (comments, `export`, optional quotes) and nothing else.
    """
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# The variable each provider's own SDK reads when no key is given.
DEFAULT_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "openai-responses": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}


def _safe_for_key(url: str) -> bool:
    """A key read implicitly only goes over TLS, or to this machine: never in clear text
    over a network to a server the user may not have meant to give it to."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" or host in ("localhost", "127.0.0.1", "::1")


def stage_key(
    env_name: str | None, provider: str, urls: list[str], dotenv: dict[str, str]
) -> tuple[str | None, str | None]:
    """(key, the variable it came from) for one stage.

    `env_name` (--api-key-env) when given; otherwise the provider's usual variable
    (OPENAI_API_KEY, ANTHROPIC_API_KEY) when it is set and every endpoint of the stage
    is https or local. The caller says which variable was read, never the value.
    """
    if env_name:
        return resolve_key(env_name, dotenv), env_name
    name = DEFAULT_KEY_VARIABLES.get(provider)
    if name is None or not (os.environ.get(name) or dotenv.get(name)):
        return None, None
    if not all(_safe_for_key(u) for u in urls):
        return None, None
    return resolve_key(name, dotenv), name


def resolve_key(env_name: str | None, dotenv: dict[str, str]) -> str | None:
    """The API key named by `env_name`, from the environment, then `.env`. Never stored.

    A key must be printable ASCII without spaces (what providers issue, and what an HTTP
    header can carry): a carriage return left by a file with Windows line endings, a
    newline or a tab is refused here, naming the variable, never the value."""
    if not env_name:
        return None
    key = os.environ.get(env_name) or dotenv.get(env_name)
    if not key:
        raise ConfigError(f"API key variable {env_name} is not set (in the environment or ./.env)")
    bad = [c for c in key if not ("!" <= c <= "~")]
    if bad:
        kind = _describe_char(bad[0])
        where = " at its end" if key[-1] == bad[0] and len(bad) == 1 else ""
        raise ConfigError(
            f"the API key in {env_name} contains {kind}{where}; keys are printable ASCII "
            "without spaces. Set the variable again without it (a key copied from a file "
            "with Windows line endings keeps a carriage return: strip it)"
        )
    return key


def _describe_char(c: str) -> str:
    names = {"\r": "a carriage return", "\n": "a line break", "\t": "a tab", " ": "a space"}
    if c in names:
        return names[c]
    if ord(c) < 32 or ord(c) == 127:
        return f"a control character (U+{ord(c):04X})"
    return f"a character outside printable ASCII (U+{ord(c):04X})"
