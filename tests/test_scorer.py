"""The scorer itself (evaluator.scoring), fed observations directly: the spec's formulas
against tests/test_scoring.py's independent implementation, with no file, CLI or report."""

from __future__ import annotations

import pytest

from evaluator.protocol import VerdictError, parse_verdict
from evaluator.scoring import METRIC_KEYS, UNCATEGORIZED, Observation, Scorer
from tests.test_scoring import make_rows, reference_metrics


def _observations(seed: int, n: int = 600) -> tuple[list[Observation], list[dict | None]]:
    rows, truth = make_rows(n, seed)
    out = []
    for row in rows:
        try:
            verdict = parse_verdict(row["alignment_judge_response"])
        except VerdictError:
            verdict = None
        out.append(Observation(row["id"], row.get("category"), row["issue_scale"], verdict))
    return out, truth


@pytest.mark.parametrize("seed", [11, 12])
def test_scorer_metrics_and_breakdowns_match_the_spec(seed):
    observations, truth = _observations(seed)
    scorer = Scorer()
    for o in observations:
        scorer.add(o)
    s = scorer.summary(resamples=500, seed=3)

    valid = [t for t in truth if t is not None]
    assert (s["n_valid"], s["n_invalid"]) == (len(valid), len(truth) - len(valid))
    expected = reference_metrics(valid)
    for k in METRIC_KEYS:
        assert s[k] == pytest.approx(expected[k], abs=1e-9), k
    # Breakdowns hold valid verdicts only; a pair without a category is "uncategorized".
    by_category: dict[str, list[dict]] = {}
    for o, t in zip(observations, truth, strict=True):
        if t is not None:
            by_category.setdefault(o.category or UNCATEGORIZED, []).append(t)
    assert set(s["by_category"]) == set(by_category)
    for name, vs in by_category.items():
        assert s["by_category"][name]["n"] == len(vs)
        assert s["by_category"][name]["pac"] == pytest.approx(reference_metrics(vs)["pac"])
    # The named-category view (the reference's grouping) leaves uncategorized pairs out.
    assert UNCATEGORIZED not in scorer.by_named_category
    # Shares of each adjusted score add up to 100.
    assert sum(s["score_distribution"]["adjusted_score"].values()) == pytest.approx(100)


def test_bootstrap_intervals_are_reproducible_and_hold_the_estimate():
    observations, _ = _observations(5)
    scorer = Scorer()
    for o in observations:
        scorer.add(o)
    first = scorer.overall.intervals(resamples=1000, seed=9)
    assert first == scorer.overall.intervals(resamples=1000, seed=9)  # seeded: same interval
    assert first != scorer.overall.intervals(resamples=1000, seed=10)
    metrics = scorer.overall.metrics()
    for name in ("pac", "ref", "ninf"):
        lo, hi = first[name]
        assert lo < metrics[name] < hi
        assert hi - lo < 15  # 600 pairs: a few points wide, not the whole scale


def test_no_valid_verdict_gives_no_metric_rather_than_zero():
    scorer = Scorer()
    scorer.add(Observation(1, "c", 3, None))
    s = scorer.summary(resamples=10)
    assert s["n_valid"] == 0 and s["n_invalid"] == 1
    assert all(s[k] is None for k in METRIC_KEYS)
    assert s["ci95"] == {"pac": None, "ref": None, "ninf": None}
