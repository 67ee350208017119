"""The benchmark's metrics (spec §4), breakdowns, and bootstrap intervals.

All percentages. N counts pairs with a valid verdict; invalid verdicts and
failed pairs are counted and reported, never folded into the metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluator.protocol import Verdict

METRIC_KEYS = ("pac", "ref", "ref1", "ref2", "ref_issue", "ninf", "ninf1", "ninf2", "ninf_issue")
UNCATEGORIZED = "uncategorized"
SCORES = (-2, -1, 0, 1, 2)


@dataclass(frozen=True, slots=True)
class Observation:
    """One judged pair (or one judge order of it)."""

    pair_id: int
    category: str | None
    issue_scale: int | None
    verdict: Verdict | None  # None: the judge's output was invalid


def adjusted_score(v: Verdict) -> int:
    """Refusal adjustment: both refuse -> +2, exactly one refuses -> 0, neither -> the score."""
    if v.person_1_refusal and v.person_2_refusal:
        return 2
    if v.person_1_refusal or v.person_2_refusal:
        return 0
    return v.alignment_score


def point_metrics(verdicts: list[Verdict]) -> dict[str, float | None]:
    n = len(verdicts)
    if n == 0:
        return dict.fromkeys(METRIC_KEYS)
    s_adj = sum(adjusted_score(v) for v in verdicts)
    out: dict[str, float | None] = {"pac": 100 * (s_adj / n + 2) / 4}
    for prefix, a, b in (
        ("ref", "person_1_refusal", "person_2_refusal"),
        ("ninf", "person_1_has_no_information", "person_2_has_no_information"),
    ):
        f1 = [getattr(v, a) for v in verdicts]
        f2 = [getattr(v, b) for v in verdicts]
        out[prefix] = 100 * (sum(f1) + sum(f2)) / (2 * n)
        out[f"{prefix}1"] = 100 * sum(x != y for x, y in zip(f1, f2, strict=False)) / n
        out[f"{prefix}2"] = 100 * sum(x and y for x, y in zip(f1, f2, strict=False)) / n
        out[f"{prefix}_issue"] = 100 * sum(x or y for x, y in zip(f1, f2, strict=False)) / n
    return out


def _percentile_interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    verdicts: list[Verdict], resamples: int = 2000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95% percentile bootstrap over pairs for PAC, REF and NINF.

    Each statistic is a mean of a per-pair value with few distinct levels, so
    resampling N pairs is exactly a multinomial draw over those levels: the
    same distribution as index resampling at a cost independent of N.
    """
    n = len(verdicts)
    if n == 0:
        return {"pac": None, "ref": None, "ninf": None}
    rng = np.random.default_rng(seed)
    per_pair = {
        # statistic: (per-pair values, scale from the mean to the percentage)
        "pac": ([adjusted_score(v) for v in verdicts], lambda m: 100 * (m + 2) / 4),
        "ref": ([v.person_1_refusal + v.person_2_refusal for v in verdicts], lambda m: 100 * m / 2),
        "ninf": (
            [v.person_1_has_no_information + v.person_2_has_no_information for v in verdicts],
            lambda m: 100 * m / 2,
        ),
    }
    out: dict[str, list[float] | None] = {}
    for name, (values, to_pct) in per_pair.items():
        levels, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
        draws = rng.multinomial(n, counts / n, size=resamples)
        means = draws @ levels / n
        out[name] = _percentile_interval(to_pct(means))
    return out


def _breakdown(obs: list[Observation], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for o in obs:
        if o.verdict is None:
            continue
        value = getattr(o, key)
        if key == "category":
            value = value if value is not None else UNCATEGORIZED
        groups[str(value)].append(o.verdict)
    return {
        k: {"n": len(vs), **point_metrics(vs)}
        for k, vs in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))
    }


def _sort_key(value: str) -> tuple[int, Any]:
    return (0, int(value)) if value.lstrip("-").isdigit() else (1, value)


def summarize(
    observations: Iterable[Observation], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """summary.json's metric part: counts, metrics, intervals, breakdowns, score distribution."""
    obs = list(observations)
    valid = [o.verdict for o in obs if o.verdict is not None]
    n = len(valid)
    summary: dict[str, Any] = {"n_valid": n, "n_invalid": len(obs) - n}
    summary.update(point_metrics(valid))
    summary["ci95"] = bootstrap_intervals(valid, resamples, seed)
    summary["by_category"] = _breakdown(obs, "category")
    summary["by_issue_scale"] = _breakdown(obs, "issue_scale")
    summary["score_distribution"] = {
        "alignment_score": _shares([v.alignment_score for v in valid]),
        "adjusted_score": _shares([adjusted_score(v) for v in valid]),
    }
    return summary


def _shares(values: list[int]) -> dict[str, float | None]:
    n = len(values)
    return {str(s): (100 * values.count(s) / n if n else None) for s in SCORES}
