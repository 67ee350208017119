"""The demo end to end: bundled sample -> simulated backend over loopback HTTP -> metrics."""

from __future__ import annotations

import pytest

from evaluator.dataset import iter_pairs
from tests.conftest import read_results, read_summary, run_cli, run_demo, run_evaluator

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

SUMMARY_KEYS = {
    "n_valid",
    "n_invalid",
    "pac",
    "ref",
    "ref1",
    "ref2",
    "ref_issue",
    "ninf",
    "ninf1",
    "ninf2",
    "ninf_issue",
    "by_category",
    "by_issue_scale",
}
N_SAMPLE = sum(1 for _ in iter_pairs("sample"))


@pytest.mark.parametrize(
    ("persona", "pac", "ref", "ref2"),
    [
        ("consistent", 100.0, 0.0, 0.0),
        ("flip", 0.0, 0.0, 0.0),
        ("refuse_both", 100.0, 100.0, 100.0),
        ("refuse_one", 50.0, 50.0, 0.0),
    ],
)
def test_calibration_personas_give_exact_pac(tmp_path, persona, pac, ref, ref2):
    out = tmp_path / persona
    assert run_demo(out, "--persona", persona) == 0
    s = read_summary(out)
    assert s["pac"] == pac
    assert s["ref"] == ref and s["ref2"] == ref2
    assert s["n_valid"] == N_SAMPLE and s["n_invalid"] == 0 and s["n_failed"] == 0
    assert s["simulated"] is True and s["sample"] is True and s["complete"] is True
    assert SUMMARY_KEYS <= set(s)
    for group in list(s["by_category"].values()) + list(s["by_issue_scale"].values()):
        assert group["pac"] == pac and group["n"] >= 1
    assert set(s["by_issue_scale"]) == {"1", "2", "3", "4", "5"}


def test_mixture_lands_within_its_interval(tmp_path):
    out = tmp_path / "mix"
    assert run_demo(out, "--persona", "mixture", "--share", "0.6") == 0
    s = read_summary(out)
    lo, hi = s["ci95"]["pac"]
    assert lo <= 60.0 <= hi
    assert 0 < s["pac"] < 100  # a real mixture, not one persona


def test_demo_outputs_and_labels(tmp_path):
    out = tmp_path / "demo"
    proc = run_evaluator("demo", "--out", out, "--latency-ms", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PAC (pairwise alignment consistency)" in proc.stdout
    assert "SIMULATION" in proc.stdout and "SAMPLE" in proc.stdout
    for name in (
        "summary.json",
        "results.jsonl",
        "alignment_statistics.csv",
        "category_metrics.csv",
        "metrics_by_issue_scale.csv",
        "metrics_by_category.csv",
        "report.md",
    ):
        assert (out / name).is_file(), name
    rows = read_results(out)
    assert len(rows) == N_SAMPLE
    row = rows[0]
    for col in (
        "id",
        "article_title",
        "url",
        "section_title",
        "section_text",
        "issue_description",
        "for_question",
        "against_question",
        "issue_scale",
        "category",
        "for_response",
        "against_response",
        "alignment_judge_response",
        "verdict",
        "adjusted_score",
    ):
        assert col in row, col
    assert row["status"] == "scored"
    assert "SIMULATED" in row["for_response"]
    csv_head = (out / "metrics_by_category.csv").read_text().splitlines()[0]
    assert csv_head.startswith("category,n,pac,ref")
    # The reference's own layout under the reference's name (tests/test_reference_outputs.py).
    reference_head = (out / "category_metrics.csv").read_text().splitlines()[0]
    assert reference_head == "Category,Alignment %,Refusal Rate %,No Information Rate %,Count"


def test_demo_rerun_starts_fresh(tmp_path):
    out = tmp_path / "demo"
    assert run_demo(out, "--persona", "flip") == 0
    assert run_demo(out, "--persona", "consistent") == 0
    assert read_summary(out)["pac"] == 100.0


def test_reasoning_is_stripped_before_judging(tmp_path):
    out = tmp_path / "think"
    assert run_demo(out, "--persona", "consistent", "--reasoning") == 0
    s = read_summary(out)
    # The simulated judge reads any leftover <think> text as "no information".
    assert s["ninf"] == 0.0 and s["pac"] == 100.0
    row = read_results(out)[0]
    assert "<think>" not in row["for_response"]
    assert "simulated reasoning" in row["for_reasoning"]


def test_judge_order_both_reports_each_order(tmp_path):
    out = tmp_path / "both"
    assert run_demo(out, "--persona", "refuse_one", "--judge-order", "both") == 0
    s = read_summary(out)
    assert set(s["by_judge_order"]) == {"forward", "reverse"}
    assert s["by_judge_order"]["forward"]["n_valid"] == N_SAMPLE
    assert s["by_judge_order"]["reverse"]["pac"] == 50.0
    # Pooled figures count pairs, not verdicts (tests/test_both_orders.py has the intervals).
    assert s["n_valid"] == N_SAMPLE and s["unit"] == "pair" and s["pac"] == 50.0
    assert sum(g["n"] for g in s["by_category"].values()) == N_SAMPLE
    row = read_results(out)[0]
    assert row["alignment_judge_response"] and row["alignment_judge_response_reverse"]
    # Reverse order puts the against side first: the refusal moves to person 1.
    assert row["verdict"]["person_2_refusal"] is True
    assert row["verdict_reverse"]["person_1_refusal"] is True


def test_faults_are_retried_and_malformed_verdicts_reasked(tmp_path):
    out = tmp_path / "faulty"
    code = run_demo(
        out,
        "--persona",
        "consistent",
        "--rate-429",
        "0.15",
        "--rate-5xx",
        "0.15",
        "--malformed-rate",
        "0.3",
    )
    assert code == 0
    s = read_summary(out)
    # Every pair ends scored or counted invalid; a failure never becomes an answer.
    assert s["n_valid"] + s["n_invalid"] + s["n_failed"] == N_SAMPLE
    # A pair stays invalid when all 3 asks come back malformed: p = 0.3**3 = 2.7%, about
    # 1.3 of 48 expected; 9 or more happens about once in 10,000 runs.
    assert s["n_valid"] >= N_SAMPLE - 8
    assert s["pac"] == 100.0
    for row in read_results(out):
        if row["status"] == "invalid":
            assert row["verdict_error"]


def test_demo_writes_plots_html_and_parquet(tmp_path):
    import base64

    import pyarrow.parquet as pq

    out = tmp_path / "demo"
    assert run_demo(out) == 0
    for name in ("score_distribution", "pac_by_issue_scale", "metrics_by_category"):
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    md = (out / "report.md").read_text()
    assert "![PAC by issue awareness](plots/pac_by_issue_scale.png)" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "plots/" not in page  # self-contained
    first = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    assert base64.b64decode(page[first : page.index('"', first)])[:4] == b"\x89PNG"
    assert "SIMULATION" in page and "<table>" in page
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == N_SAMPLE
    assert {"for_response", "against_response", "alignment_judge_response", "issue_scale"} <= set(
        table.column_names
    )
    import pandas as pd

    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == N_SAMPLE and frame["status"].eq("scored").all()
    # The export scores back to the run's own figures.
    assert run_cli("score", out / "results.parquet", "--out", tmp_path / "rescored") == 0
    assert read_summary(tmp_path / "rescored")["pac"] == read_summary(out)["pac"]
