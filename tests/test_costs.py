"""Cost: the price table, cost per stage in the outputs, and --max-cost stopping before the budget."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from evaluator.config import ConfigError, RunConfig
from evaluator.costs import CostMeter, load_prices, stage_prices, usage_cost
from tests.conftest import (
    SUBPROCESS_ENV,
    evaluator_cmd,
    probe_shas,
    read_summary,
    run_cli,
    run_eval,
)

URL = "http://127.0.0.1:9/v1"

# Dear simulated models, so a few calls cost dollars: gen worst case ~ $0.42 a call.
PRICES = """taken = "test"
[models."sim-model"]
input = 100.0
output = 100.0
[models."sim-judge"]
input = 100.0
output = 100.0
batch_discount = 0.5
"""


def _config(**kw) -> RunConfig:
    return RunConfig(**{"data": "d", "model": "m", "base_url": URL, "judge_base_url": URL, **kw})


def test_bundled_table_matches_dated_names_and_flags_override():
    table = load_prices()
    assert table.taken
    sonnet = table.lookup("claude-sonnet-4-5-20250929")
    assert sonnet is not None and sonnet.input == 3.0 and sonnet.cached_input == 0.3
    assert table.lookup("gpt-4.1-2025-04-14").output == 8.0
    assert table.lookup("gpt-4.1-mini").input == 0.4  # not the gpt-4.1 entry
    assert table.lookup("gpt-4.1-experimental") is None  # only date or -latest suffixes
    assert table.lookup("my-local-llama") is None
    prices = stage_prices(_config(model="gpt-4.1", price_out=1.0, judge_model="gpt-4o-mini"))
    assert prices["gen"].input == 2.0 and prices["gen"].output == 1.0
    assert prices["judge"].output == 0.6
    batch = stage_prices(_config(judge_model="gpt-4o-mini", judge_mode="batch"))["judge"]
    assert batch.output == pytest.approx(0.3) and batch.input == pytest.approx(0.075)


def test_usage_cost_reads_each_providers_usage():
    price = load_prices().lookup("gpt-4.1")
    chat = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 600},
    }
    assert usage_cost(chat, price) == pytest.approx((400 * 2 + 600 * 0.5 + 100 * 8) / 1e6)
    responses = {
        "input_tokens": 1000,
        "output_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
    }
    assert usage_cost(responses, price) == pytest.approx((1000 * 2 + 100 * 8) / 1e6)
    claude = load_prices().lookup("claude-haiku-4-5")
    messages = {
        "input_tokens": 50,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000,
        "output_tokens": 10,
        "prompt_tokens": 3050,
        "completion_tokens": 10,
    }
    assert usage_cost(messages, claude) == pytest.approx(
        (50 * 1.0 + 1000 * 1.25 + 2000 * 0.1 + 10 * 5.0) / 1e6
    )


def test_bad_price_files_and_unpriced_budgets_are_named(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[models."x"]\ninput = 1\n')
    with pytest.raises(ConfigError, match="'x': input and output prices are required"):
        load_prices(bad)
    bad.write_text('[models."x"]\ninput = 1\noutput = -2\n')
    with pytest.raises(ConfigError, match="output must be a number >= 0"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="--max-cost needs prices for model 'my-llama'"):
        CostMeter.for_run(_config(model="my-llama", judge_model="gpt-4.1", max_cost=5.0))


@pytest.mark.slow
def test_max_cost_without_prices_exits_2(tmp_path, synthetic, capsys):
    code = run_eval(synthetic(2), URL, tmp_path / "run", "--max-cost", "1", model="my-llama")
    assert code == 2
    assert "--max-cost needs prices for model 'my-llama'" in capsys.readouterr().err


@pytest.mark.slow
def test_max_cost_stops_before_the_budget_and_resume_finishes(
    tmp_path, synthetic, sim_process, capsys
):
    data = synthetic(20)
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    server = sim_process("--persona", "consistent")
    out = tmp_path / "run"
    common = [
        "--judge-model",
        "sim-judge",
        "--prices",
        prices,
        "--concurrency",
        "1",
        "--judge-concurrency",
        "1",
    ]
    code = run_eval(data, server.base_url, out, *common, "--max-cost", "0.9", model="sim-model")
    assert code == 76
    first = read_summary(out)
    assert 0 < first["cost"]["total_usd"] <= 0.9
    assert first["complete"] is False and first["n_pending"] > 0
    assert first["cost"]["max_cost_usd"] == 0.9
    assert first["last_session"]["budget_exhausted"] is True
    report = (out / "report.md").read_text()
    assert "budget (--max-cost) $0.9" in report
    # `status` shows tokens and cost per stage and the budget.
    capsys.readouterr()
    assert run_cli("status", out) == 0
    status = capsys.readouterr().out
    assert "generation tokens:" in status and "budget (--max-cost) $0.9" in status
    # A bare resume with a larger budget finishes the run; no request is sent twice.
    assert run_cli("run", "--resume", "--out", out, "--quiet", "--max-cost", "100") == 0
    final = read_summary(out)
    assert final["complete"] is True and final["n_valid"] == 20
    assert final["cost"]["total_usd"] > first["cost"]["total_usd"]
    assert final["cost"]["max_cost_usd"] == 100
    probes = probe_shas(out)
    bodies = {k: n for k, n in server.stats(bodies=True)["bodies"].items() if k not in probes}
    assert len(bodies) == 20 * 3 and set(bodies.values()) == {1}
    # The full run's cost is the sum of its calls' costs (both sessions).
    assert final["cost"]["gen"]["calls"] == 40 and final["cost"]["judge"]["calls"] == 20


@pytest.mark.slow
def test_cost_metrics_while_running(tmp_path, synthetic, sim_process):
    """The run's cost, projection and budget are exported while the run goes."""
    import socket
    import subprocess
    import time

    data = synthetic(40)
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    server = sim_process("--persona", "consistent", "--latency-ms", "40")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    proc = subprocess.Popen(
        evaluator_cmd(
            "run",
            "--data",
            data,
            "--model",
            "sim-model",
            "--base-url",
            server.base_url,
            "--judge-model",
            "sim-judge",
            "--prices",
            prices,
            "--out",
            out,
            "--quiet",
            "--concurrency",
            "2",
            "--judge-concurrency",
            "2",
            "--max-cost",
            "1000",
            "--metrics-port",
            port,
            "--judge-prompt",
            "builtin",
        ),
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            found = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line.startswith(("valbench_run_cost_usd", "valbench_projected", "valbench_max"))
            }
            projected = found.get("valbench_projected_cost_usd", float("nan"))
            if found.get('valbench_run_cost_usd{stage="judge"}', 0) > 0 and projected == projected:
                break  # (NaN != NaN: no projection yet)
            time.sleep(0.2)
        assert found['valbench_run_cost_usd{stage="generation"}'] > 0
        assert found["valbench_max_cost_usd"] == 1000
        projected = found["valbench_projected_cost_usd"]
        spent = (
            found['valbench_run_cost_usd{stage="generation"}']
            + found['valbench_run_cost_usd{stage="judge"}']
        )
        assert projected >= spent
    finally:
        proc.wait(120)
    assert proc.returncode == 0
    summary = read_summary(out)
    # Once finished, the projection is the total.
    assert summary["cost"]["projected_total_usd"] == pytest.approx(summary["cost"]["total_usd"])
    assert (
        orjson.loads((out / "summary.json").read_bytes())["cost"]["judge"]["price"]["input"] == 100
    )
