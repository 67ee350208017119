"""One loader for a run config: a TOML file and flags -> RunConfig.

Used by the command line (evaluator.cli) and by deploy/k8s/render.py. Flags win over the
file, the file over the declared defaults (evaluator.config.settings).

TOML keys are the flag names, with `-` or `_` (`timeout`, `judge-rpm`, `max_retry_wait`),
and the field names of earlier versions keep working (`timeout_s`, `judge_concurrency`).
A role's settings may also sit in a `[model]` or `[judge]` table, without the `judge_`
prefix (`[judge] rpm = 60`, `name` for the model's name); its managed servers in
`[model.vllm]` / `[judge.vllm]`.
"""

from __future__ import annotations

import shlex
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluator.config.run_config import ConfigError, RunConfig
from evaluator.config.settings import (
    DEFAULT_JUDGE_PROMPT_CHOICE,
    FLAGS,
    SETTINGS,
    VARIANTS,
    flag_of,
)
from workers.typecheck import alternatives, matches

# The model name a judge-only run reports when --model is not given.
JUDGE_ONLY_MODEL = "answers from the dataset"
SERVER_TABLES = {"vllm": "[vllm]", "judge_vllm": "[judge.vllm]"}



def _toml_keys() -> dict[str, str]:
    """Every spelling a TOML key may take -> the setting's field (or input) name: the flag
    name with - or _ (`max-retry-wait`, `max_retry_wait`) and the field's (`max_retry_wait_s`)."""
    keys = {}
    for s in SETTINGS:
        if s.kind == "stored":
            continue  # set by the run, never given
        for _, name, flag in s.variants():
            for key in (name, flag, flag.replace("-", "_")):
                keys[key] = name
    return keys


KEYS = _toml_keys()
# The names a TOML key is written with in the docs and the "known:" list of an error.
TOML_NAMES = sorted({FLAGS[name].replace("-", "_") for name in set(KEYS.values())})


def _type_name(hint: Any) -> str:
    """How a config-file error names a type: `int`, `int or float`, `list of str`."""
    names = {int: "int", float: "int or float", str: "str", bool: "bool", dict: "table"}
    parts = []
    for t in alternatives(hint):
        origin = typing.get_origin(t) or t
        if origin is list:
            args = typing.get_args(t)
            parts.append("list of " + _type_name(args[0]) if args else "list")
        else:
            parts.append(names.get(origin, getattr(origin, "__name__", str(t))))
    return " or ".join(dict.fromkeys(parts))


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML run config as {field or input name: value}, each value of its declared type;
    paths in it are relative to the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    written: dict[str, str] = {}  # field -> the key that set it, as written
    unknown: list[str] = []

    def put(key: str, value: Any, where: str) -> None:
        name = KEYS.get(key)
        if name is None:
            unknown.append(key)
            return
        if name in values:
            raise ConfigError(
                f"config file {path}: {where} repeats the top-level key {written[name]}"
            )
        values[name], written[name] = value, where

    for key, value in raw.items():
        if key in ("model", "judge") and isinstance(value, dict):
            continue
        put(key, value, key)
    for table, prefix in (("model", ""), ("judge", "judge_")):
        section = raw.get(table)
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            flat = prefix + ("model" if key == "name" else key.replace("-", "_"))
            put(flat, value, f"[{table}] {key}")
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(TOML_NAMES)})"
        )
    for name, value in values.items():
        setting, _ = VARIANTS[name]
        tp = setting.toml_type or setting.type
        if not matches(value, tp):  # strict: "5" is no int, true no number (workers.typecheck)
            raise ConfigError(
                f"config file {path}: {name} must be {_type_name(tp)}, got {type(value).__name__}"
            )
    for name in ("judge_prompt_file", "system_prompt_file"):
        if name in values:
            values[name] = path.parent / values[name]
    if "ca_bundle" in values:  # stored absolute: a later --resume may run elsewhere
        values["ca_bundle"] = str((path.parent / values["ca_bundle"]).resolve())
    if values.get("judge_prompt") not in (None, "paper", "builtin"):
        values["judge_prompt"] = path.parent / values["judge_prompt"]  # a file, as above
    if isinstance(values.get("base_url"), str):
        values["base_url"] = [values["base_url"]]
    if isinstance(values.get("judge_base_url"), str):
        values["judge_base_url"] = [values["judge_base_url"]]
    return values


def _check_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(flags) - set(KEYS.values()))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return {k: v for k, v in flags.items() if v is not None}


def _server_keys(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Takes the managed-server keys out of `values` (--vllm MODEL, --gpus, --vllm-command
    and their TOML keys) as partial `vllm` / `judge_vllm` tables."""
    tables: dict[str, dict[str, Any]] = {}
    for name, (setting, role) in VARIANTS.items():
        if setting.server_key is None or name not in values:
            continue
        if setting.kind != "input" and not isinstance(values[name], str):
            continue  # a whole [model.vllm] table
        value = values.pop(name)
        if setting.server_key == "command":
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise ConfigError(f"--vllm-command: {exc}") from None
            if not argv:
                raise ConfigError("--vllm-command is empty")
            for table in SERVER_TABLES:
                tables.setdefault(table, {})["command"] = argv
            continue
        table = "judge_vllm" if role == "judge" else "vllm"
        tables.setdefault(table, {})[setting.server_key] = value
    return tables


def _gather(file: Path | None, flags: Mapping[str, Any]) -> tuple[dict, dict]:
    """(settings, partial server tables) from the file, then the flags over them."""
    values = read_config_file(file) if file is not None else {}
    partial = _server_keys(values)
    given = _check_flags(flags)
    for table, keys in _server_keys(given).items():
        partial[table] = {**partial.get(table, {}), **keys}
    values.update(given)
    return values, partial


def _merge_server_keys(values: dict[str, Any], partial: dict[str, dict[str, Any]]) -> None:
    if partial and all(set(t) == {"command"} for t in partial.values()):
        if not any(values.get(t) for t in SERVER_TABLES):
            raise ConfigError("--vllm-command needs --vllm or --judge-vllm (or a [*.vllm] table)")
    for table, given in partial.items():
        if table not in values and "model" not in given:
            if set(given) == {"command"}:
                continue  # --vllm-command applies to whichever stage has servers
            names = ", ".join(flag_of(("judge_" if table == "judge_vllm" else "") + k) for k in given)
            raise ConfigError(
                f"{names} need(s) {flag_of(table)} (or {SERVER_TABLES[table]} in --config)"
            )
        values[table] = {**(values.get(table) or {}), **given}


def _resolve_prompts(values: dict[str, Any], *, fetch_paper: bool, default: str | None) -> None:
    """The judge prompt choice (paper | builtin | a file) and the system prompt file as the
    fields they set: the texts, their sources, the judge's schema."""
    from evaluator.judge_prompt import JudgePromptError, read_prompt_file
    from evaluator.judge_prompt import resolve as resolve_judge_prompt

    choice = values.pop("judge_prompt", None)
    path = values.pop("judge_prompt_file", None)
    if choice is not None and path is not None:
        raise ConfigError("give --judge-prompt or --judge-prompt-file, not both")
    choice = path if path is not None else (choice or default)
    try:
        if choice == DEFAULT_JUDGE_PROMPT_CHOICE and not fetch_paper:
            values["judge_prompt_source"] = choice
        elif choice is not None:
            values.update(resolve_judge_prompt(choice).config_values())
        system_path = values.pop("system_prompt_file", None)
        if system_path is not None:
            text = read_prompt_file(system_path, "system prompt file")
            values["system_prompt"] = text.strip()
            values["system_prompt_source"] = f"file:{Path(system_path).resolve()}"
    except JudgePromptError as exc:
        raise ConfigError(str(exc)) from None


def load_overrides(file: Path | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given when resuming a run that has a stored config: the file's and the
    flags', to apply to the stored config (the run refuses any that change requests,
    prompts included). Managed-server keys come as partial tables."""
    values, partial = _gather(file, flags)
    _resolve_prompts(values, fetch_paper=True, default=None)
    for table, given in partial.items():
        values[table] = {**(values.get(table) or {}), **given}
    return values


def load_run_config(
    file: Path | None,
    flags: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    fetch_paper: bool = True,
    validate: bool = True,
) -> Any:
    """The RunConfig of a TOML file (or None) and flags ({field or input name: value};
    None values are "not given"); with `resume`, None when neither names a run.

    `fetch_paper=False` (checking a config that runs elsewhere, e.g. deploy/k8s/render.py):
    the paper's prompt is only named, not fetched; the config's prompt text is then not the
    one the run will send. Raises ConfigError naming the setting at fault."""
    values, partial = _gather(file, flags or {})
    if resume and not any(n in values for n in ("data", "model", "base_url")):
        return None
    _merge_server_keys(values, partial)
    # Managed servers serve their model under the role's model name (by default the one
    # they load), and stand in for the role's URLs.
    for table, name in (("vllm", "model"), ("judge_vllm", "judge_model")):
        if values.get(table) and isinstance(values[table].get("model"), str):
            values.setdefault(name, values[table]["model"])
    if values.get("vllm"):
        values.setdefault("base_url", [])  # filled in by the servers once they answer
    _judge_only_defaults(values)
    missing = [flag_of(n) for n in ("data", "model", "base_url") if n not in values]
    if missing:
        raise ConfigError(
            f"run needs {', '.join(missing)} (as flags or in --config)"
            + (" or --vllm" if "--base-url" in missing else "")
        )
    if values.get("judge_vllm"):
        values.setdefault("judge_base_url", [])  # filled in by the judge's servers
    elif "judge_base_url" not in values:
        if values.get("judge_only") and not values["base_url"]:
            raise ConfigError(
                "a judge-only run needs --judge-base-url (or --judge-vllm): it has no model "
                "endpoint to share"
            )
        # The judge shares the model's endpoints (or its managed servers): same key too.
        values["judge_base_url"] = values["base_url"]
        if "provider" in values:  # same endpoint, same API
            values.setdefault("judge_provider", values["provider"])
        values.setdefault("judge_api_key_env", values.get("api_key_env"))
    _resolve_prompts(values, fetch_paper=fetch_paper, default=DEFAULT_JUDGE_PROMPT_CHOICE)
    config = RunConfig(**values)
    if validate:
        config.validate()
    return config


def _judge_only_defaults(values: dict[str, Any]) -> None:
    """A dataset that holds the answers needs no model endpoint: judge-only defaults.

    Without --model or --base-url, the dataset is looked at: if it holds both answer
    columns the run is judge-only (the run checks the columns again either way).
    """
    from evaluator.dataset import DatasetError, has_answer_columns

    if not values.get("judge_only") and "data" in values and not values.get("vllm"):
        if "model" not in values or "base_url" not in values:
            try:
                values["judge_only"] = has_answer_columns(values["data"], values.get("split", "test"))
            except DatasetError as exc:
                raise ConfigError(str(exc)) from None
    if values.get("judge_only"):
        values.setdefault("model", JUDGE_ONLY_MODEL)
        values.setdefault("base_url", [])
