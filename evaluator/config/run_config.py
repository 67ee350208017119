"""The run config: RunConfig (flat fields, made from evaluator.config.settings), its typed
role view (RoleSettings), its validation and the resume guard."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, field, fields, make_dataclass
from typing import Any
from urllib.parse import urlsplit

from evaluator.breaker import BreakerRules, BreakerSettingError
from evaluator.config.declare import REQUIRED
from evaluator.config.settings import (
    REASONING_EFFORTS,
    REQUEST_SETTINGS,
    ROLE_SETTINGS,
    SETTINGS,
    VARIANTS,
    flag_of,
)

# Config keys of earlier versions that no longer mean anything; dropped when a stored
# config is read so that older checkpoints still resume.
RETIRED_KEYS = ("http_processes",)


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


def _field(default: Any) -> Any:
    if default is REQUIRED:
        return field()
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default))
    return field(default=default)


class _RunConfigBase:
    """RunConfig's behaviour; its fields come from the declaration (SETTINGS)."""

    __slots__ = ()

    def __post_init__(self) -> None:
        # Older configs and single-endpoint callers give one URL as a string.
        for name in ("base_url", "judge_base_url"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])

    def role(self, role: str) -> RoleSettings:
        """The settings of one role ("model" or "judge") as one typed object."""
        if role not in ("model", "judge"):
            raise ValueError(f"role must be model or judge, got {role!r}")
        prefix = "judge_" if role == "judge" else ""
        return RoleSettings(**{s.name: getattr(self, prefix + s.name) for s in ROLE_SETTINGS})

    def stage_options(self, stage: str) -> dict[str, Any]:
        """The provider options of a stage ("gen" or "judge"), as workers.providers takes them."""
        return self.role("judge" if stage == "judge" else "model").options()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        # `http_processes` (helper processes for HTTP) was removed; checkpoints written
        # before then store it, and how calls are sent never changed what a run asks.
        data = {k: v for k, v in data.items() if k not in RETIRED_KEYS}
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    @property
    def judge_orders(self) -> tuple[str, ...]:
        order = self.judge_order  # type: ignore[attr-defined]
        return ("forward", "reverse") if order == "both" else (order,)

    def validate(self) -> None:
        """The first wrong setting as a ConfigError naming its flag."""
        _validate(self)


# Every field of a run: the declaration's fields, role settings twice (model, judge_).
RunConfig = make_dataclass(
    "RunConfig",
    [
        (name, s.type, _field(s.default_for(role)))
        for s in SETTINGS
        if s.kind != "input"
        for role, name, _ in s.variants()
    ],
    bases=(_RunConfigBase,),
    slots=True,
    kw_only=True,
)
RunConfig.__module__ = __name__
RunConfig.__doc__ = "A run's settings, flat (`judge_rpm`); `role()` gives one role's as a type."


def _role_methods() -> dict[str, Any]:
    def options(self: Any) -> dict[str, Any]:
        """The provider options given (workers.providers' keyword arguments)."""
        out = {
            "reasoning_effort": self.reasoning_effort,
            "thinking_budget": self.thinking_budget,
            "web_search": self.web_search,
        }
        return {k: v for k, v in out.items() if v not in (None, False)}

    return {"options": options}


# One role's settings (endpoints, provider and options, limits, servers, batch mode,
# prices): what the model and the judge each have, under the same names.
RoleSettings = make_dataclass(
    "RoleSettings",
    [(s.name, s.type) for s in ROLE_SETTINGS],
    namespace=_role_methods(),
    frozen=True,
    kw_only=True,
)
RoleSettings.__module__ = __name__


def _validate(config: Any) -> None:
    _validate_numbers(config)
    _validate_choices(config)
    for name in ("base_url", "judge_base_url"):
        for url in getattr(config, name):
            _check_url_secrets(flag_of(name), url)
    try:
        BreakerRules.parse(config.max_failures)
    except BreakerSettingError as exc:
        raise ConfigError(str(exc)) from None
    if config.ca_bundle is not None:
        from workers.transport import tls_context

        try:
            tls_context(config.ca_bundle)
        except OSError as exc:  # ssl.SSLError too: not PEM, or no certificate in it
            raise ConfigError(
                f"--ca-bundle {config.ca_bundle}: not a readable PEM file of CA "
                f"certificates ({exc})"
            ) from None
    if config.shard is not None:
        from evaluator.sharding import ShardError, parse_shard

        try:
            parse_shard(config.shard)
        except ShardError as exc:
            raise ConfigError(str(exc)) from None
    _validate_servers(config)
    for role in ("model", "judge"):
        _validate_role(config, role)


def _validate_role(config: Any, role: str) -> None:
    r = config.role(role)
    prefix = "judge_" if role == "judge" else ""
    urls_flag, servers_flag = flag_of(prefix + "base_url"), flag_of(prefix + "vllm")
    if r.vllm is not None and r.base_url:
        raise ConfigError(f"give {urls_flag} or {servers_flag} (managed servers), not both")
    _validate_provider(r, prefix)
    if r.mode == "batch" and len(r.base_url) > 1:
        raise ConfigError(f"batch mode takes one {urls_flag}, got {len(r.base_url)}")
    if role == "model" and config.judge_only:
        return  # nothing is generated: the model's endpoint is not used
    if not r.base_url and r.vllm is None and not (role == "judge" and config.vllm):
        raise ConfigError(f"{urls_flag} is required")
    for url in r.base_url:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{urls_flag} must be an http(s) URL, got {url!r}")


def _validate_servers(config: Any) -> None:
    from workers.server_settings import ServerSettings, ServerSettingsError

    for name, table in (("vllm", "model"), ("judge_vllm", "judge")):
        raw = getattr(config, name)
        if raw is None:
            continue
        try:
            ServerSettings.from_dict(raw, where=f"[{table}.vllm]")
        except ServerSettingsError as exc:
            raise ConfigError(str(exc)) from None


def _validate_provider(r: Any, prefix: str) -> None:
    from workers.providers import OPTIONS_BY_PROVIDER

    if r.provider not in OPTIONS_BY_PROVIDER:
        raise ConfigError(
            f"{flag_of(prefix + 'provider')} must be one of {', '.join(OPTIONS_BY_PROVIDER)}, "
            f"got {r.provider!r}"
        )
    for option in ("reasoning_effort", "thinking_budget", "web_search"):
        value = getattr(r, option)
        if value not in (None, False) and option not in OPTIONS_BY_PROVIDER[r.provider]:
            raise ConfigError(
                f"{flag_of(prefix + option)} is not an option of provider {r.provider!r} (it "
                f"takes: {', '.join(sorted(OPTIONS_BY_PROVIDER[r.provider]))})"
            )
    if r.reasoning_effort is not None and r.reasoning_effort not in REASONING_EFFORTS:
        raise ConfigError(
            f"{flag_of(prefix + 'reasoning_effort')} must be one of {', '.join(REASONING_EFFORTS)}"
        )
    budget = r.thinking_budget
    if budget is not None and (isinstance(budget, bool) or budget < 1024):
        raise ConfigError(
            f"{flag_of(prefix + 'thinking_budget')} must be at least 1024 tokens (the API's minimum)"
        )


def _validate_choices(config: Any) -> None:
    for name, (setting, _) in VARIANTS.items():
        if setting.choices is None or setting.kind == "input" or name.endswith("provider"):
            continue  # providers: named by workers.providers, checked with their options
        value = getattr(config, name)
        if value not in setting.choices:
            raise ConfigError(
                f"{flag_of(name)} must be one of {', '.join(setting.choices)}, got {value!r}"
            )


def _validate_numbers(config: Any) -> None:
    """One line naming the flag, the value and what it must be, for every numeric setting."""
    for name, (setting, _) in VARIANTS.items():
        b = setting.bounds
        value = getattr(config, name, None) if b is not None else None
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = is_int or (isinstance(value, float) and math.isfinite(value))
        ok = (is_int if b.integer else is_number) and (
            (value > b.low if b.above else value >= b.low) and value <= b.high
        )
        if not ok:
            what = "an integer" if b.integer else "a number"
            above = f"above {b.low:g}" if b.above else f"at least {b.low:g}"
            raise ConfigError(
                f"{flag_of(name)} must be {above} and at most {b.high:,.0f} ({what}: {b.unit}), "
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


def request_differences(stored: Any, new: Any) -> list[str]:
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
