"""The run config's one declaration (evaluator/config/settings.py): `run` flags, TOML keys,
`--help` defaults, validation messages, the stored format and the role view all follow it."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from evaluator.cli.cmd_run import config_from_args
from evaluator.cli.parser import SESSION_FLAGS, build_parser
from evaluator.config import (
    REQUEST_SETTINGS,
    ConfigError,
    RoleSettings,
    RunConfig,
    load_overrides,
    load_run_config,
)
from evaluator.config.declare import format_default
from evaluator.config.loader import KEYS, TOML_NAMES
from evaluator.config.settings import VARIANTS

# Every field of the stored config ("config" in the checkpoint's meta) before the
# declaration: checkpoints written by earlier versions must still load, and new ones
# must still be read by them.
STORED_FIELDS = {
    "data", "model", "base_url", "judge_base_url", "judge_model", "split", "limit",
    "api_key_env", "judge_api_key_env", "provider", "judge_provider", "reasoning_effort",
    "judge_reasoning_effort", "thinking_budget", "judge_thinking_budget", "web_search",
    "judge_web_search", "system_prompt", "judge_prompt", "judge_prompt_source",
    "system_prompt_source", "judge_schema", "judge_only", "judge_order", "concurrency",
    "judge_concurrency", "rpm", "judge_rpm", "tpm", "judge_tpm", "timeout_s",
    "max_retry_wait_s", "max_response_mb", "ca_bundle", "max_attempts", "backoff_base_s",
    "retry_budget", "judge_retries", "price_in", "price_out", "judge_price_in",
    "judge_price_out", "reuse", "shard", "vllm", "judge_vllm", "prices", "max_cost", "mode",
    "judge_mode", "batch_max_requests", "batch_max_mb", "batch_capacity", "batch_window_s",
    "batch_idle_s", "batch_poll_s", "max_failures", "simulated", "protocol",
}  # fmt: skip
# The resume guard before the declaration: the same settings must still be guarded.
GUARDED = {
    "data", "split", "model", "judge_model", "system_prompt", "judge_prompt", "judge_schema",
    "judge_order", "protocol", "shard", "provider", "judge_provider", "reasoning_effort",
    "judge_reasoning_effort", "thinking_budget", "judge_thinking_budget", "web_search",
    "judge_web_search",
}  # fmt: skip
URL = "http://127.0.0.1:9/v1"
BASE = {"data": "sample", "model": "m", "base_url": [URL], "judge_prompt": "builtin"}


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["run"]


def _setting_actions():
    """The `run` flags that are settings: all but --help, --config and the session options."""
    out = {}
    for action in _run_parser()._actions:
        flags = [f for f in action.option_strings if f.startswith("--")]
        if not flags or flags[0] in (*SESSION_FLAGS, "--help", "--config"):
            continue
        (flag,) = flags
        out[flag] = action
    return out


def test_every_run_flag_is_a_toml_key_of_the_same_name_and_back():
    actions = _setting_actions()
    assert len(actions) > 50
    flags = set(actions)
    keys = {"--" + k.replace("_", "-") for k in TOML_NAMES}
    assert flags == keys
    for flag, action in actions.items():
        name = flag[2:]
        # With dashes or underscores, the key sets what the flag sets.
        assert KEYS[name] == action.dest, flag
        assert KEYS[name.replace("-", "_")] == action.dest, flag


def test_every_help_default_is_the_configs_default():
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(RunConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    checked = 0
    for flag, action in _setting_actions().items():
        # A flag left out is None: the file's value, then the config's default, applies.
        assert action.default is None, flag
        shown = re.findall(r"\(default: ([^;)]*)", action.help or "")
        value = defaults.get(action.dest)
        if value in (None, False, [], dataclasses.MISSING) or action.dest == "judge_prompt":
            continue  # no value to show (an unset cap says what it means instead)
        assert shown, f"{flag}: no default in its help, the config's is {value!r}"
        assert shown[-1].replace("%%", "%") == format_default(value), flag
        checked += 1
    assert checked >= 15
    # and the help's words for the default the run asks for when no prompt is named
    help_text = _setting_actions()["--judge-prompt"].help
    assert "(default: paper)" in help_text


def _sample(flag: str, action) -> tuple[list[str], object]:
    """(argv for the flag, the same value as TOML) for one setting flag."""
    if action.const is True:
        return [flag], True
    if action.choices:
        value = list(action.choices)[-1]
        return [flag, value], value
    if action.type is int:
        return [flag, "2048"], 2048
    if action.type is float:
        return [flag, "2.5"], 2.5
    if action.nargs == "+":
        return [flag, "a", "b"], ["a", "b"]
    if action.dest.endswith("max_failures"):
        return [flag, "5,50%"], "5,50%"
    if action.type is None and action.nargs is None and action.dest in STRINGS:
        return [flag, STRINGS[action.dest]], STRINGS[action.dest]
    return None  # type: ignore[return-value]


# A valid value of each string setting the comparison below covers.
STRINGS = {
    "split": "train",
    "shard": "1/4",
    "api_key_env": "MY_KEY",
    "judge_api_key_env": "JUDGE_KEY",
    "judge_model": "j",
    "reasoning_effort": "low",
    "judge_reasoning_effort": "high",
    "prices": "prices.toml",
}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_a_flag_and_its_toml_key_give_the_same_config(tmp_path):
    compared = 0
    for flag, action in _setting_actions().items():
        sample = _sample(flag, action)
        if sample is None:
            continue
        argv, value = sample
        base = ["run", "--data", "sample", "--model", "m", "--base-url", URL]
        base += ["--judge-prompt", "builtin"]
        try:
            by_flag = config_from_args(build_parser().parse_args([*base, *argv]))
        except ConfigError as exc:  # a sample value this setting refuses: refused both ways
            by_flag = exc
        for key in (flag[2:], flag[2:].replace("-", "_")):
            path = tmp_path / "run.toml"
            path.write_text(f"{key} = {_toml_value(value)}\n", encoding="utf-8")
            args = build_parser().parse_args([*base, "--config", str(path)])
            if isinstance(by_flag, ConfigError):
                with pytest.raises(ConfigError) as err:
                    config_from_args(args)
                assert str(err.value) == str(by_flag), key
                continue
            assert config_from_args(args) == by_flag, key
            compared += 1
    assert compared > 40


def test_older_keys_and_role_tables_keep_working(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'data = "sample"\ntimeout_s = 30\nmax_retry_wait_s = 5\njudge_concurrency = 7\n'
        'judge_prompt = "builtin"\n'
        f'[model]\nname = "m"\nbase_url = "{URL}"\nrpm = 60\n'
        '[judge]\nname = "j"\nbase-url = "http://127.0.0.1:10/v1"\ntpm = 1000\nmode = "batch"\n'
        "order = 'both'\n"
    )
    config = load_run_config(path)
    assert (config.timeout_s, config.max_retry_wait_s, config.judge_concurrency) == (30, 5, 7)
    assert (config.model, config.rpm, config.base_url) == ("m", 60, [URL])
    assert (config.judge_model, config.judge_tpm, config.judge_mode) == ("j", 1000, "batch")
    assert config.judge_base_url == ["http://127.0.0.1:10/v1"]
    assert config.judge_order == "both"
    # The new names: flag names as keys; a role's settings in its table, without judge_.
    path.write_text(
        f'data = "sample"\ntimeout = 30\nmax-retry-wait = 5\n[model]\nname = "m"\nbase_url = "{URL}"\n'
        '[judge]\nconcurrency = 7\nprompt = "builtin"\n'
    )
    again = load_run_config(path)
    assert (again.timeout_s, again.max_retry_wait_s, again.judge_concurrency) == (30, 5, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ("timeout = 5\ntimeout_s = 6\n", "timeout_s repeats the top-level key timeout"),
        ('[judge]\nrpm = "fast"\n', "judge_rpm must be int or float, got str"),
        ("reuse = ['a', 1]\n", "reuse must be list of str"),
        ("web_search = 1\n", "web_search must be bool, got int"),
        ("judge_schema = 1\n", "unknown key(s) judge_schema"),
        ("gpus = '0-1'\n", "--gpus need(s) --vllm"),
        ("[judge]\nthinking_budget = 10\n", "--judge-thinking-budget is not an option"),
        ("[judge]\nconcurrency = 0\n", "--judge-concurrency must be at least 1"),
    ],
)
def test_one_clear_message_names_the_setting(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path, BASE)
    assert message in str(err.value)


def test_managed_server_keys_as_flags_or_keys(tmp_path):
    flags = {**BASE, "vllm": "org/model", "gpus": "0,1", "tensor_parallel": 2}
    flags.pop("base_url")
    flags["vllm_command"] = "python -m workers.simulated --port {port}"
    by_flags = load_run_config(None, flags)
    path = tmp_path / "run.toml"
    path.write_text(
        'vllm = "org/model"\ngpus = "0,1"\ntensor-parallel = 2\n'
        'vllm_command = "python -m workers.simulated --port {port}"\n'
    )
    flat = load_run_config(path, {k: v for k, v in BASE.items() if k != "base_url"})
    path.write_text(
        '[model.vllm]\nmodel = "org/model"\ngpus = "0,1"\ntensor_parallel = 2\n'
        'command = ["python", "-m", "workers.simulated", "--port", "{port}"]\n'
    )
    table = load_run_config(path, {k: v for k, v in BASE.items() if k != "base_url"})
    assert by_flags == flat == table
    assert by_flags.vllm["tensor_parallel"] == 2 and by_flags.model == "m"
    # On resume the keys come as partial tables (merged into the stored ones by the run).
    assert load_overrides(None, {"gpus": "2"}) == {"vllm": {"gpus": "2"}}


def test_stored_config_keeps_its_flat_format_and_request_settings():
    config = load_run_config(None, BASE)
    stored = config.to_dict()
    assert set(stored) == STORED_FIELDS
    assert RunConfig.from_dict(stored) == config
    assert set(REQUEST_SETTINGS) == GUARDED
    assert all(VARIANTS[name][0].request for name in GUARDED)


def test_role_view():
    config = load_run_config(
        None,
        {**BASE, "judge_base_url": ["http://127.0.0.1:10/v1"], "judge_rpm": 30.0, "rpm": 5.0,
         "judge_provider": "anthropic", "judge_thinking_budget": 2048, "price_in": 1.0},
    )  # fmt: skip
    model, judge = config.role("model"), config.role("judge")
    assert isinstance(model, RoleSettings) and type(judge) is type(model)
    assert (model.model, model.rpm, model.price_in, model.provider) == ("m", 5.0, 1.0, "openai")
    assert (judge.model, judge.rpm, judge.base_url) == (
        "google/gemma-3-27b-it", 30.0, ["http://127.0.0.1:10/v1"]
    )
    assert judge.options() == {"thinking_budget": 2048} == config.stage_options("judge")
    assert model.options() == {}
    with pytest.raises(ValueError):
        config.role("gen")


def test_render_and_the_cli_load_the_same_config(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render", Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "render.py"
    )
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    path = tmp_path / "run.toml"
    path.write_text(f'data = "sample"\njudge_prompt = "builtin"\n[model]\nname = "m"\nbase_url = "{URL}"\n')
    args = build_parser().parse_args(["run", "--config", str(path), "--judge-base-url", URL])
    assert render.load_run_config(path, URL) == config_from_args(args)
    path.write_text('data = "sample"\n[model]\nname = "m"\nbase_url = "ftp://x"\n')
    with pytest.raises(render.RenderError, match="--base-url must be an http"):
        render.load_run_config(path)
