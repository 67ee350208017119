"""`fetch` on a machine with network access, then runs with the network gone: the paper's
prompt (a stand-in on loopback), the hub dataset and the calibration sets (a stand-in hub
that huggingface_hub talks to over HTTP) all come from the cache."""

from __future__ import annotations

import orjson
import pytest

from evaluator.hub import CALIBRATION_SETS
from tests.conftest import read_summary, run_cli, run_eval, run_evaluator
from tests.standins import STANDIN_PROMPT_SHA256, FakeHub, parquet_bytes, responses_rows
from workers.simulated.data import synthetic_row

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

N = 6


def _hub_repos() -> dict[str, dict[str, bytes]]:
    repos = {
        "val-bench/VAL-Bench": {
            "data/test-00000-of-00001.parquet": parquet_bytes(
                [synthetic_row(i) for i in range(1, N + 1)]
            ),
            "README.md": b"stand-in dataset card",
        }
    }
    for name in CALIBRATION_SETS:
        repos[f"val-bench/{name}"] = {
            "data/train-00000-of-00001.parquet": parquet_bytes(responses_rows(name, N))
        }
    return repos


def test_fetch_then_run_and_calibrate_offline(
    tmp_path, sim_server, reference_server, monkeypatch, capsys
):
    reference = reference_server()
    hub = FakeHub(_hub_repos()).__enter__()
    try:
        # The paper's prompt in this process (its pin is the stand-in's here); the hub
        # parts as a separate `fetch` process would on a login node: huggingface_hub reads
        # HF_HUB_OFFLINE once, at import, and this test process has it set.
        assert run_cli("fetch", "--only", "paper") == 0
        assert capsys.readouterr().out.count("ok  ") == 1
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        proc = run_evaluator("fetch", "--only", "dataset", "--only", "calibration", timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("ok  ") == 5 and "FAILED" not in proc.stdout
        assert "hf:val-bench/calibration-one-refusal-50 (split train)" in proc.stdout
    finally:
        hub.__exit__(None, None, None)
        reference.__exit__(None, None, None)
    downloads = sum(n for path, n in hub.requests.items() if "/resolve/" in path)
    assert downloads >= 5  # the split's file of each of the five repos
    # No network from here on: both servers are gone and the hub is marked offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = sim_server()
    out = tmp_path / "offline"
    assert run_eval("hf:val-bench/VAL-Bench", server.base_url, out, judge_prompt=None) == 0
    s = read_summary(out)
    assert s["n_valid"] == N and s["dataset"] == "hf:val-bench/VAL-Bench"
    assert s["judge_prompt_source"] == "paper" and s["judge_prompt_sha256"] == STANDIN_PROMPT_SHA256
    code = run_cli(
        "calibrate",
        "--judge-model",
        "simulated-judge",
        "--judge-base-url",
        server.base_url,
        "--out",
        tmp_path / "cal",
        "--quiet",
    )
    assert code == 0
    result = orjson.loads((tmp_path / "cal" / "calibration.json").read_bytes())
    assert [r["data"] for r in result["sets"]] == [f"hf:val-bench/{n}" for n in CALIBRATION_SETS]
    assert result["all_pass"]


def test_fetch_without_network_says_what_failed(capsys):
    # The autouse fixture: reference URL on a closed port, hub offline, empty cache.
    assert run_cli("fetch", "--only", "paper", "--only", "dataset") == 4
    printed = capsys.readouterr().out
    assert printed.count("FAILED") == 2
    assert "paper judge prompt" in printed and "hf:val-bench/VAL-Bench (split test)" in printed


def test_an_offline_hub_dataset_not_in_the_cache_names_fetch(tmp_path, sim_server, capsys):
    code = run_eval("hf:val-bench/VAL-Bench", sim_server().base_url, tmp_path / "x")
    err = capsys.readouterr().err
    assert code == 2 and "python -m evaluator fetch" in err and "val-bench/VAL-Bench" in err
