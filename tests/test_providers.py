"""Every provider's wire format over real HTTP against the simulated server: full runs,
error classes, rate-limit headers, reasoning/thinking and citations stored apart."""

from __future__ import annotations

import asyncio
import sqlite3

import orjson
import pytest

from evaluator import protocol
from evaluator.calls import generation_body, judge_body
from evaluator.config import RunConfig
from evaluator.dataset import iter_pairs
from tests.conftest import read_results, read_summary, run_cli, run_eval
from workers.base import Completion, ErrorClass
from workers.client import EndpointConfig
from workers.providers import PROVIDERS, get_provider
from workers.simulated import sides_from_pairs

PROVIDER_NAMES = ("openai", "openai-responses", "anthropic")


def _sides(data):
    return sides_from_pairs(iter_pairs(str(data)))


@pytest.mark.slow
def test_responses_run_with_reasoning_and_web_search(tmp_path, synthetic, sim_server):
    data = synthetic(8)
    server = sim_server(sides=_sides(data))
    out = tmp_path / "run"
    code = run_eval(
        data,
        server.base_url,
        out,
        "--provider",
        "openai-responses",
        "--reasoning-effort",
        "low",
        "--web-search",
        "--judge-model",
        "simulated-judge",
    )
    assert code == 0
    summary = read_summary(out)
    assert summary["pac"] == 100.0 and summary["n_valid"] == 8 and summary["n_invalid"] == 0
    stats = server.stats()
    # Model and judge both spoke the Responses format (the judge follows --provider on a
    # shared endpoint); nothing went to chat completions.
    assert stats["by_format"]["responses"] == 8 * 3 + 1  # + the judge's preflight call
    assert "chat" not in stats["by_format"]
    row = read_results(out)[0]
    assert row["for_reasoning"].startswith("(simulated reasoning)")
    assert "(simulated reasoning)" not in row["for_response"]  # the answer is apart
    assert row["for_citations"][0]["url"].startswith("https://example.invalid/")
    # Judge requests ask for the verdict schema through text.format.
    config = RunConfig.from_dict(_stored_config(out))
    judge = judge_body(config, "u")
    assert judge["text"]["format"]["type"] == "json_schema"
    assert judge["text"]["format"]["schema"] == protocol.VERDICT_SCHEMA
    # The reasoning effort is the model's: its requests drop the sampling parameters
    # (reasoning models reject them); the judge keeps the spec's.
    assert "reasoning" not in judge and judge["temperature"] == protocol.JUDGE_TEMPERATURE
    gen = generation_body(config, "q")
    assert gen["reasoning"] == {"effort": "low", "summary": "auto"} and "temperature" not in gen
    assert gen["tools"] == [{"type": "web_search"}]
    assert summary["cost"]["gen"]["tokens_out"] > 0


def _stored_config(out) -> dict:
    conn = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        (raw,) = conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
    finally:
        conn.close()
    return orjson.loads(raw)


@pytest.mark.slow
def test_anthropic_run_with_thinking_tool_verdicts_and_caching(tmp_path, synthetic, sim_server):
    data = synthetic(8)
    server = sim_server(sides=_sides(data), api_key="sk-ant-sim-0123456789")
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'taken = "test"\n'
        '[models."claude-sim"]\ninput = 3.0\noutput = 15.0\ncached_input = 0.3\n'
        "cache_write = 3.75\n"
        '[models."claude-judge-sim"]\ninput = 1.0\noutput = 5.0\ncached_input = 0.1\n'
        "cache_write = 1.25\n"
    )
    out = tmp_path / "run"
    env_key = "SIM_ANTHROPIC_KEY"
    import os

    os.environ[env_key] = "sk-ant-sim-0123456789"
    try:
        code = run_eval(
            data,
            server.base_url,
            out,
            "--provider",
            "anthropic",
            "--api-key-env",
            env_key,
            "--thinking-budget",
            "2048",
            "--judge-model",
            "claude-judge-sim",
            "--prices",
            prices,
            model="claude-sim",
        )
    finally:
        del os.environ[env_key]
    assert code == 0
    summary = read_summary(out)
    assert summary["pac"] == 100.0 and summary["n_valid"] == 8 and summary["n_invalid"] == 0
    assert server.stats()["by_format"] == {"messages": 24 + 1}  # + the preflight call
    row = read_results(out)[0]
    assert row["for_reasoning"].startswith("(simulated reasoning)")  # the thinking block
    # The judge answered through the forced tool: its stored answer is the tool's input.
    verdict = orjson.loads(row["alignment_judge_response"])
    assert verdict == row["verdict"]
    # The rubric is cached after its first use (the judge's preflight test call, which sends
    # the same system block): every judge call of the run reads it from the cache.
    conn = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        usages = [
            (role, orjson.loads(u))
            for role, u in conn.execute("SELECT role, usage FROM calls WHERE status = 'done'")
        ]
        (probes,) = conn.execute("SELECT value FROM meta WHERE key = 'preflight_usage'").fetchone()
    finally:
        conn.close()
    (probe,) = [u for stage, u in orjson.loads(probes) if stage == "judge"]
    assert probe["cache_creation_input_tokens"] > 0
    judge_usage = [u for role, u in usages if role.startswith("judge")]
    assert sum(u["cache_creation_input_tokens"] > 0 for u in judge_usage) == 0
    assert sum(u["cache_read_input_tokens"] > 0 for u in judge_usage) == 8
    usages.append(("judge", probe))  # the test call is in the run's cost too
    # The summary's cost is the price table applied to each usage, cache rates included.
    rates = {"gen": (3.0, 0.3, 3.75, 15.0), "judge": (1.0, 0.1, 1.25, 5.0)}
    expected = {"gen": 0.0, "judge": 0.0}
    for role, u in usages:
        stage = "judge" if role.startswith("judge") else "gen"
        fresh, read, write, out_rate = rates[stage]
        expected[stage] += (
            u["input_tokens"] * fresh
            + u["cache_read_input_tokens"] * read
            + u["cache_creation_input_tokens"] * write
            + u["output_tokens"] * out_rate
        ) / 1e6
    for stage in ("gen", "judge"):
        assert summary["cost"][stage]["usd"] == pytest.approx(expected[stage], abs=1e-6)
    assert summary["cost"]["total_usd"] == pytest.approx(sum(expected.values()), abs=1e-6)
    report = (out / "report.md").read_text()
    assert "| judge | 8 |" in report and "| 1, 5 |" in report and "Estimated cost: $" in report


@pytest.mark.slow
def test_anthropic_judge_without_forced_tool_answers_in_text(tmp_path, synthetic, sim_server):
    """With thinking, a forced tool is not allowed: the judge answers JSON text instead."""
    data = synthetic(4)
    server = sim_server(sides=_sides(data))
    out = tmp_path / "run"
    code = run_eval(
        data,
        server.base_url,
        out,
        "--provider",
        "anthropic",
        "--judge-thinking-budget",
        "1024",
    )
    assert code == 0
    summary = read_summary(out)
    assert summary["n_valid"] == 4 and summary["pac"] == 100.0
    row = read_results(out)[0]
    assert row["alignment_judge_response"].startswith("{")


@pytest.mark.slow
def test_model_and_judge_on_different_providers(tmp_path, synthetic, sim_server):
    data = synthetic(4)
    model_server = sim_server(sides=_sides(data))
    judge_server = sim_server()
    out = tmp_path / "run"
    code = run_eval(
        data,
        model_server.base_url,
        out,
        "--provider",
        "anthropic",
        "--judge-base-url",
        judge_server.base_url,
        "--judge-provider",
        "openai-responses",
    )
    assert code == 0
    assert model_server.stats()["by_format"] == {"messages": 8}
    assert judge_server.stats()["by_format"] == {"responses": 4 + 1}  # + the preflight call
    assert read_summary(out)["pac"] == 100.0


def _attempt(server, provider: str, question: str, key: str | None = None, judge=False):
    """One attempt of one request in `provider`'s format at the simulated server."""
    p = get_provider(provider)
    if judge:
        body = p.build_body(
            "m",
            protocol.DEFAULT_JUDGE_PROMPT,
            question,
            temperature=0.1,
            top_p=0.9,
            max_tokens=256,
            json_schema=protocol.VERDICT_SCHEMA,
        )
    else:
        body = p.build_body("m", "sys", question, temperature=0.1, top_p=0.9, max_tokens=256)

    async def go():
        async with p.client(EndpointConfig(server.base_url, api_key=key, provider=provider)) as c:
            return await c.attempt(orjson.dumps(body))

    return asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_error_classes_in_each_format(provider, sim_server):
    server = sim_server()
    cases = {
        "[[sim:context_length]] q?": ErrorClass.CONTEXT_LENGTH,
        "[[sim:invalid_request]] q?": ErrorClass.INVALID_REQUEST,
        "[[sim:content_policy]] q?": ErrorClass.CONTENT_FILTER,  # an error response
    }
    for question, expected in cases.items():
        result = _attempt(server, provider, question).result
        assert not isinstance(result, Completion)
        assert result.error_class is expected, (question, result)
    # A filtered or refused answer in a normal response is an answer that is a refusal.
    withheld = _attempt(server, provider, "[[sim:content_filter]] q?").result
    assert isinstance(withheld, Completion), withheld
    expected_reason = "refusal" if provider == "anthropic" else "content_filter"
    assert withheld.finish_reason == expected_reason and withheld.content == ""
    truncated = _attempt(server, provider, "[[sim:truncate]] q?").result
    assert isinstance(truncated, Completion) and truncated.finish_reason == "length"
    ok = _attempt(server, provider, "Is this fine?").result
    assert isinstance(ok, Completion) and ok.finish_reason == "stop"
    assert ok.usage["prompt_tokens"] > 0 and ok.usage["completion_tokens"] > 0
    assert "SIMULATED" in ok.content


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_overload_rate_limit_auth_and_quota(provider, sim_server):
    overloaded = _attempt(sim_server(rate_5xx=1.0), provider, "q?")
    assert overloaded.result.error_class is ErrorClass.TRANSIENT
    assert overloaded.result.status == (529 if provider == "anthropic" else 503)
    limited = _attempt(sim_server(rate_429=1.0, retry_after_s=1.5), provider, "q?")
    assert limited.result.error_class is ErrorClass.RATE_LIMIT
    assert limited.retry_after_s == pytest.approx(1.5, abs=0.01)
    denied = _attempt(sim_server(api_key="right-key-123"), provider, "q?", key="wrong-key-456")
    assert denied.result.error_class is ErrorClass.FATAL and denied.result.status == 401
    assert "wrong-key-456" not in denied.result.message
    broke = _attempt(sim_server(quota_after=0), provider, "q?")
    assert broke.result.error_class is ErrorClass.FATAL
    if provider == "anthropic":
        assert "billing_error" in broke.result.message


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_rate_limit_headers_in_each_format(provider, sim_server):
    server = sim_server(rpm_limit=120, tpm_limit=600_000)
    first = _attempt(server, provider, "q?")
    assert isinstance(first.result, Completion)
    assert first.limits.limit_requests == 120 and first.limits.limit_tokens == 600_000
    assert first.limits.remaining_requests is not None and first.limits.reset_requests_s >= 0
    if provider == "anthropic":  # input and output limits are announced separately
        assert first.limits.limit_input_tokens == 600_000
    # The bucket holds one second's share (2 requests): the third at once is refused.
    _attempt(server, provider, "q?")
    third = _attempt(server, provider, "q?")
    assert third.result.error_class is ErrorClass.RATE_LIMIT
    assert third.retry_after_s is not None and 0 < third.retry_after_s <= 1.0


@pytest.mark.slow
def test_judge_tool_answer_and_malformed_tool_input(sim_server):
    """The forced tool's input is the verdict; one with a field missing is an invalid verdict."""
    question = (
        "Issue: x\n\nQuestion 1: a\n\nPerson 1's response: I agree with the position this "
        "question asks me to defend.\n\nQuestion 2: b\n\nPerson 2's response: I disagree "
        "with the position this question asks me to defend."
    )
    good = _attempt(sim_server(), "anthropic", question, judge=True).result
    assert protocol.parse_verdict(good.content).alignment_score == 2
    bad = _attempt(sim_server(malformed_rate=1.0), "anthropic", question, judge=True).result
    with pytest.raises(protocol.VerdictError, match="alignment_score"):
        protocol.parse_verdict(bad.content)


@pytest.mark.slow
def test_provider_options_are_checked_and_change_the_content_key(tmp_path, synthetic, capsys):
    data = synthetic(2)
    url = "http://127.0.0.1:9/v1"
    assert run_eval(data, url, tmp_path / "a", "--thinking-budget", "2048") == 2
    assert "not an option of provider 'openai'" in capsys.readouterr().err
    assert (
        run_eval(data, url, tmp_path / "b", "--provider", "anthropic", "--thinking-budget", "5")
        == 2
    )
    assert "at least 1024" in capsys.readouterr().err
    base = RunConfig(data="d", model="m", base_url=url, judge_base_url=url)
    other = RunConfig(
        data="d", model="m", base_url=url, judge_base_url=url, judge_provider="anthropic"
    )
    assert judge_body(base, "u") != judge_body(other, "u")


@pytest.mark.slow
def test_stage_tables_set_the_judge_provider(tmp_path, synthetic, sim_server):
    data = synthetic(3)
    server = sim_server(sides=_sides(data))
    config = tmp_path / "run.toml"
    config.write_text(
        f'data = "{data}"\n[model]\nname = "m"\nbase_url = "{server.base_url}"\n'
        f'[judge]\nbase_url = "{server.base_url}"\nprovider = "anthropic"\nprompt = "builtin"\n'
    )
    out = tmp_path / "run"
    assert run_cli("run", "--config", config, "--out", out, "--quiet") == 0
    assert server.stats()["by_format"] == {"chat": 6, "messages": 3 + 1}  # + preflight


def test_every_provider_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, provider in PROVIDERS.items():
        assert f"`{name}`" in readme and provider.doc in readme
