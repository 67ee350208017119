"""`calibrate`: the four calibration sets (built here in the authors' responses schema)
judged by the simulated judge; expected vs measured PAC; a miscalibrated judge fails."""

from __future__ import annotations

import orjson
import pytest

from evaluator.calibrate import EXIT_MISCALIBRATED
from evaluator.hub import CALIBRATION_SETS
from tests.conftest import read_summary, run_cli
from tests.standins import STANDIN_PROMPT_SHA256, parquet_bytes, responses_rows

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

N = 12


def _sets(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    for name in CALIBRATION_SETS:
        (folder / f"{name}.parquet").write_bytes(parquet_bytes(responses_rows(name, N)))
    return folder


def _calibrate(server, folder, out, *extra):
    return run_cli(
        "calibrate",
        "--judge-model",
        "simulated-judge",
        "--judge-base-url",
        server.base_url,
        "--data-dir",
        folder,
        "--out",
        out,
        "--quiet",
        *extra,
    )


def test_a_faithful_judge_passes_all_four(tmp_path, sim_server, reference_server, capsys):
    folder = _sets(tmp_path)
    server = sim_server()
    reference_server()  # calibrate, like run, uses the paper's prompt by default
    out = tmp_path / "cal"
    assert _calibrate(server, folder, out) == 0
    printed = capsys.readouterr().out
    assert "| set | expected PAC | measured PAC | 95% interval" in printed
    result = orjson.loads((out / "calibration.json").read_bytes())
    assert result["all_pass"] and result["judge_prompt_source"] == "paper"
    assert result["judge_prompt_sha256"] == STANDIN_PROMPT_SHA256
    measured = {r["set"]: (r["expected_pac"], r["measured_pac"], r["verdict"]) for r in result["sets"]}
    assert measured == {name: (pac, pac, "pass") for name, pac in CALIBRATION_SETS.items()}
    for name in CALIBRATION_SETS:  # ordinary run directories
        s = read_summary(out / name)
        assert s["judge_only"] and s["n_valid"] == N and s["ci95"]["pac"] is not None
        assert f"| {name} | " in printed
    assert server.stats()["by_kind"].get("model", 0) == 0
    assert server.stats()["by_kind"]["judge"] == 4 * (N + 1)  # each run's preflight call too
    assert (out / "calibration.md").read_text().count("| pass |") == 4


def test_a_miscalibrated_judge_exits_non_zero(tmp_path, sim_server, capsys):
    folder = _sets(tmp_path)
    server = sim_server(judge_persona="lenient")  # calls every pair aligned, sees no refusal
    out = tmp_path / "cal"
    code = _calibrate(server, folder, out, "--judge-prompt", "builtin")
    assert code == EXIT_MISCALIBRATED != 0
    result = orjson.loads((out / "calibration.json").read_bytes())
    verdicts = {r["set"]: r["verdict"] for r in result["sets"]}
    assert verdicts == {
        "calibration-unaligned-0": "FAIL",
        "calibration-aligned-100": "pass",
        "calibration-refusal-100": "pass",
        "calibration-one-refusal-50": "FAIL",
    }
    assert "**Not calibrated.**" in capsys.readouterr().out


def test_a_missing_set_is_named(tmp_path, sim_server, capsys):
    folder = _sets(tmp_path)
    (folder / "calibration-refusal-100.parquet").unlink()
    code = _calibrate(sim_server(), folder, tmp_path / "cal", "--judge-prompt", "builtin")
    assert code == 2 and "calibration-refusal-100" in capsys.readouterr().err
