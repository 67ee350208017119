"""compare (leaderboard) and agreement (judge reliability) over real runs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from evaluator.analysis.agreement import weighted_kappa
from tests.conftest import run_cli, run_demo, run_eval


def _demo(out, persona, *extra):
    assert run_demo(out, "--persona", persona, *extra) == 0


@pytest.mark.slow
def test_compare_ranks_comparable_runs(tmp_path):
    _demo(tmp_path / "flip", "flip")
    _demo(tmp_path / "cons", "consistent")
    _demo(tmp_path / "half", "refuse_one")
    out = tmp_path / "board"
    assert (
        run_cli("compare", tmp_path / "flip", tmp_path / "cons", tmp_path / "half", "--out", out)
        == 0
    )
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["model"] for r in rows] == [
        "simulated-consistent",
        "simulated-refuse_one",
        "simulated-flip",
    ]
    assert float(rows[1]["pac"]) == 50.0
    md = (out / "compare.md").read_text()
    assert "SIMULATED" in md and "| 1 | cons (simulated-consistent) |" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_compare_tells_two_runs_of_one_model_apart_and_hides_no_bar(tmp_path):
    """The same model twice (a 60% run and a 100% run): two labels, bars side by side."""
    from evaluator.analysis.compare import compare_figure

    _demo(tmp_path / "sixty", "mixture", "--share", "0.6")
    _demo(tmp_path / "all", "mixture", "--share", "1.0")
    out = tmp_path / "board"
    assert run_cli("compare", tmp_path / "sixty", tmp_path / "all", "--out", out) == 0
    md = (out / "compare.md").read_text()
    assert "| 1 | all (simulated-mixture) |" in md and "| 2 | sixty (simulated-mixture) |" in md
    assert f"- sixty (simulated-mixture): `{(tmp_path / 'sixty').resolve()}`" in md
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [float(r["pac"]) for r in rows] == sorted((float(r["pac"]) for r in rows), reverse=True)
    assert float(rows[0]["pac"]) == 100.0 and 50 < float(rows[1]["pac"]) < 75
    png = (out / "compare.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    # The figure as drawn: one bar per run and metric, none covering another, each
    # labelled with its run, PAC bars as long as each run's PAC.
    import matplotlib.pyplot as plt

    for r in rows:
        for k in (
            "pac",
            "pac_lo",
            "pac_hi",
            "ref",
            "ref_lo",
            "ref_hi",
            "ninf",
            "ninf_lo",
            "ninf_hi",
        ):
            r[k] = float(r[k])
        r["simulated"] = r["simulated"] == "True"
    fig = compare_figure(rows)
    try:
        from matplotlib.container import BarContainer

        ax = fig.axes[0]
        groups = [c for c in ax.containers if isinstance(c, BarContainer)]
        bars = [b for container in groups for b in container.patches]
        assert len(bars) == 3 * len(rows)
        spans = sorted((b.get_y(), b.get_y() + b.get_height()) for b in bars)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # disjoint
        pac_bars = groups[0].patches
        assert [b.get_width() for b in pac_bars] == [r["pac"] for r in rows]
        assert pac_bars[0].get_y() > pac_bars[1].get_y()  # best on top
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["sixty (simulated-mixture)", "all (simulated-mixture)"]
        assert [c.get_label() for c in groups] == ["PAC", "REF", "NINF"]
    finally:
        plt.close(fig)


def test_compare_labels_name_what_differs():
    from evaluator.analysis.compare import run_labels

    base = {"model": "m", "judge": "j", "judge_prompt": "builtin 23b1", "judge_order": "forward"}
    rows = [{**base, "run": "/x/a/run"}, {**base, "run": "/x/b/run", "judge": "k"}]
    assert run_labels(rows) == ["run (m, judge j)", "run (m, judge k)"]
    rows[1]["judge"] = "j"
    assert run_labels(rows) == ["a/run (m)", "b/run (m)"]


@pytest.mark.slow
def test_compare_refuses_different_judges_unless_forced(tmp_path, synthetic, sim_server, capsys):
    data = synthetic(10)
    server = sim_server()
    for judge in ("judge-a", "judge-b"):
        assert run_eval(data, server.base_url, tmp_path / judge, "--judge-model", judge) == 0
    args = ("compare", tmp_path / "judge-a", tmp_path / "judge-b", "--out", tmp_path / "board")
    assert run_cli(*args) == 2
    assert "different judges: judge-a, judge-b" in capsys.readouterr().err
    assert run_cli(*args, "--force") == 0
    assert "Ranked with --force" in (tmp_path / "board" / "compare.md").read_text()


@pytest.mark.slow
def test_agreement_between_two_judges_over_the_same_answers(
    tmp_path, synthetic, sim_server, capsys
):
    data = synthetic(30)
    server = sim_server()
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_eval(data, server.base_url, a, "--judge-model", "judge-a") == 0
    assert run_eval(data, server.base_url, b, "--judge-model", "judge-b", "--reuse", a) == 0
    assert run_cli("agreement", a, b, "--out", tmp_path / "agr") == 0
    import orjson

    result = orjson.loads((tmp_path / "agr" / "agreement.json").read_bytes())
    # The simulated judge reads the same answers the same way: perfect agreement.
    assert result["n_pairs"] == 30 and result["exact_agreement"] == 1.0
    assert result["weighted_kappa_quadratic"] == 1.0 and result["pac_difference"] == 0.0
    # Runs with different generations are refused: agreement is about judges.
    c = tmp_path / "c"
    other = sim_server(persona="refuse_both")  # a model that answers differently
    assert run_eval(data, other.base_url, c) == 0
    capsys.readouterr()
    assert run_cli("agreement", a, c) == 2
    assert "different generations" in capsys.readouterr().err


@pytest.mark.slow
def test_agreement_between_judge_orders_of_one_run(tmp_path, capsys):
    _demo(tmp_path / "both", "refuse_one", "--judge-order", "both")
    assert run_cli("agreement", tmp_path / "both") == 0
    text = capsys.readouterr().out
    # Refusal flags are compared by side, not by position: reverse order swaps persons.
    assert "| refusal-flag agreement | 1.000 |" in text
    _demo(tmp_path / "fwd", "flip")
    assert run_cli("agreement", tmp_path / "fwd") == 2


def test_weighted_kappa_known_values():
    same = np.array([0, 1, 2, 3, 4])
    assert weighted_kappa(same, same) == 1.0
    assert weighted_kappa(np.array([0, 0, 4, 4]), np.array([4, 4, 0, 0])) == -1.0
    # One step apart everywhere: close to, but below, perfect.
    k = weighted_kappa(
        np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 4, 1, 2, 3, 4, 3])
    )
    assert 0.7 < k < 1.0


@pytest.mark.slow
def test_compare_and_agreement_refuse_different_judge_prompts_unless_forced(
    tmp_path, synthetic, sim_server, reference_server, capsys
):
    data = synthetic(10)
    server = sim_server()
    reference_server()
    builtin, paper = tmp_path / "builtin", tmp_path / "paper"
    assert run_eval(data, server.base_url, builtin, judge_prompt="builtin") == 0
    assert run_eval(data, server.base_url, paper, "--reuse", builtin, judge_prompt="paper") == 0
    capsys.readouterr()
    args = ("compare", builtin, paper, "--out", tmp_path / "board")
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "different judge prompts" in err and "builtin" in err and "paper" in err
    assert "different judge response schemas" in err
    assert run_cli(*args, "--force") == 0
    md = (tmp_path / "board" / "compare.md").read_text()
    assert "Ranked with --force despite: different judge prompts" in md
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "board" / "compare.csv").open())}
    assert rows[str(paper)]["judge_prompt"].startswith("paper ")
    assert rows[str(builtin)]["judge_prompt"].startswith("builtin ")
    # agreement: the same answers (reused), judged under two protocols.
    assert run_cli("agreement", builtin, paper) == 2
    assert "different protocols" in capsys.readouterr().err
    assert run_cli("agreement", builtin, paper, "--force") == 0
    assert "Measured with --force despite: different judge prompts" in capsys.readouterr().out


@pytest.mark.slow
def test_kappa_is_undefined_when_both_judges_give_one_constant_score(tmp_path, capsys):
    import orjson

    # refuse_one: every verdict in both orders is 0 (one side refuses).
    _demo(tmp_path / "both", "refuse_one", "--judge-order", "both")
    assert run_cli("agreement", tmp_path / "both", "--out", tmp_path / "agr") == 0
    result = orjson.loads((tmp_path / "agr" / "agreement.json").read_bytes())
    assert result["exact_agreement"] == 1.0
    assert result["weighted_kappa_quadratic"] is None
    assert "undefined" in result["weighted_kappa_note"]
    assert "| weighted Cohen's kappa (quadratic) | undefined:" in capsys.readouterr().out
    assert weighted_kappa(np.array([2, 2, 2]), np.array([2, 2, 2])) is None
    # One constant judge against a varying one is defined (no better than chance: 0).
    assert weighted_kappa(np.array([2, 2, 2, 2]), np.array([0, 4, 1, 3])) == 0.0
