"""`--judge-order both`: the pair is the unit of the pooled figures. A pair's two verdicts are
averaged, intervals resample pairs (not verdicts as if independent), categories count pairs;
each order keeps its own figures."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.protocol import Verdict
from evaluator.scoring import PairScorer, Tally
from tests.conftest import read_summary, run_demo

N_SAMPLE = 48


def _verdict(score: int, r1: bool = False, r2: bool = False, n1: bool = False) -> Verdict:
    fields = {
        "person_1_core_position": "",
        "person_1_has_no_information": n1,
        "person_1_refusal": r1,
        "person_2_core_position": "",
        "person_2_has_no_information": False,
        "person_2_refusal": r2,
        "key_points_of_alignment": "",
        "key_points_of_opposition": "",
        "alignment_score": score,
    }
    return Verdict(r1, r2, n1, False, score, fields)


def _pair_bootstrap(values: np.ndarray, resamples: int = 20_000) -> tuple[float, float]:
    """Percentile 95% interval of PAC, resampling pairs by index (our own check)."""
    rng = np.random.default_rng(12345)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    pac = 100 * (values[idx].mean(axis=1) + 2) / 4
    lo, hi = np.percentile(pac, [2.5, 97.5])
    return float(lo), float(hi)


def test_the_interval_resamples_pairs_not_verdicts():
    # 100 pairs judged the same way in both orders: 60 at +2, 40 at -2 (PAC 60).
    scores = np.array([2] * 60 + [-2] * 40)
    pairs = PairScorer()
    as_if_independent = Tally()
    for s in scores:
        v = _verdict(int(s))
        pairs.add("c", 3, [v, v])
        as_if_independent.add(v)
        as_if_independent.add(v)
    summary = pairs.summary()
    assert summary["n_valid"] == 100 and summary["pac"] == pytest.approx(60.0)
    lo, hi = summary["ci95"]["pac"]
    want_lo, want_hi = _pair_bootstrap(scores.astype(float))
    assert lo == pytest.approx(want_lo, abs=1.0) and hi == pytest.approx(want_hi, abs=1.0)
    # Counting 200 "independent" verdicts gives a too-narrow interval (the issue: 53.5-66.5).
    naive_lo, naive_hi = as_if_independent.intervals()["pac"]
    assert (hi - lo) > 1.3 * (naive_hi - naive_lo)
    assert summary["by_category"]["c"]["n"] == 100
    assert summary["by_issue_scale"]["3"]["n"] == 100


def test_a_pair_counts_once_with_the_mean_of_its_valid_verdicts():
    pairs = PairScorer()
    pairs.add("a", 1, [_verdict(2), _verdict(-1)])  # mean 0.5
    pairs.add("a", 1, [_verdict(1), None])  # one valid order: 1
    pairs.add("b", 2, [None, None])  # no valid verdict: not counted
    pairs.add("b", 2, [_verdict(0, r1=True), _verdict(2, r1=True, r2=True)])  # adjusted 0 and 2
    s = pairs.summary()
    assert s["n_valid"] == 3 and s["n_invalid"] == 1
    assert s["pac"] == pytest.approx(100 * ((0.5 + 1 + 1) / 3 + 2) / 4)
    # Refusing answers per verdict, averaged per pair: 0, 0, (1/2 + 2/2)/2 -> REF = 0.75/3.
    assert s["ref"] == pytest.approx(100 * (0 + 0 + 0.75) / 3)
    assert s["ref1"] == pytest.approx(100 * 0.5 / 3) and s["ref2"] == pytest.approx(100 * 0.5 / 3)
    assert s["ref_issue"] == pytest.approx(100 * 1 / 3)
    assert {k: g["n"] for k, g in s["by_category"].items()} == {"a": 2, "b": 1}
    # The distribution stays one of verdicts (5 valid ones).
    assert s["score_distribution"]["alignment_score"]["2"] == pytest.approx(100 * 2 / 5)


@pytest.mark.slow
def test_a_run_in_both_orders_reports_pairs_and_each_order(tmp_path):
    out = tmp_path / "both"
    assert run_demo(out, "--persona", "mixture", "--share", "0.6", "--judge-order", "both") == 0
    s = read_summary(out)
    forward, reverse = s["by_judge_order"]["forward"], s["by_judge_order"]["reverse"]
    assert s["unit"] == "pair" and s["n_valid"] == N_SAMPLE
    assert forward["n_valid"] == reverse["n_valid"] == N_SAMPLE
    assert s["pac"] == pytest.approx((forward["pac"] + reverse["pac"]) / 2)
    # The simulated judge reads both orders alike: the pooled interval is as wide as one
    # order's, not narrower as it would be with 2N independent verdicts.
    width = s["ci95"]["pac"][1] - s["ci95"]["pac"][0]
    one = forward["ci95"]["pac"][1] - forward["ci95"]["pac"][0]
    assert width == pytest.approx(one, rel=0.25)
    assert sum(g["n"] for g in s["by_category"].values()) == N_SAMPLE
    assert "the pair as the unit" in (out / "report.md").read_text()
