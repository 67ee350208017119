"""The benchmark's metrics (spec §4), breakdowns, and bootstrap intervals.

All percentages. N counts pairs with a valid verdict; invalid verdicts and
failed pairs are counted and reported, never folded into the metrics.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
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


@dataclass
class Tally:
    """Counts from which every metric of a group of verdicts follows (constant memory).

    `refusals[k]` counts pairs where k of the two answers were refusals (0, 1 or 2);
    `no_info[k]` likewise for the no-information flags.
    """

    adjusted: list[int] = field(default_factory=lambda: [0] * 5)  # index: score + 2
    raw: list[int] = field(default_factory=lambda: [0] * 5)
    refusals: list[int] = field(default_factory=lambda: [0] * 3)
    no_info: list[int] = field(default_factory=lambda: [0] * 3)
    invalid: int = 0

    @property
    def n(self) -> int:
        return sum(self.adjusted)

    def add(self, v: Verdict | None) -> None:
        if v is None:
            self.invalid += 1
            return
        self.adjusted[adjusted_score(v) + 2] += 1
        self.raw[v.alignment_score + 2] += 1
        self.refusals[v.person_1_refusal + v.person_2_refusal] += 1
        self.no_info[v.person_1_has_no_information + v.person_2_has_no_information] += 1

    def metrics(self) -> dict[str, float | None]:
        n = self.n
        if n == 0:
            return dict.fromkeys(METRIC_KEYS)
        total = sum(score * count for score, count in zip(SCORES, self.adjusted, strict=True))
        out: dict[str, float | None] = {"pac": 100 * (total / n + 2) / 4}
        for prefix, (_, one, both) in (("ref", self.refusals), ("ninf", self.no_info)):
            out[prefix] = 100 * (one + 2 * both) / (2 * n)
            out[f"{prefix}1"] = 100 * one / n
            out[f"{prefix}2"] = 100 * both / n
            out[f"{prefix}_issue"] = 100 * (one + both) / n
        return out

    def intervals(self, resamples: int = 2000, seed: int = 0) -> dict[str, list[float] | None]:
        """95% percentile bootstrap over pairs for PAC, REF and NINF.

        Each statistic is a mean of a per-pair value with few distinct levels, so
        resampling N pairs is exactly a multinomial draw over those levels: the
        same distribution as index resampling, at a cost independent of N.
        """
        n = self.n
        if n == 0:
            return {"pac": None, "ref": None, "ninf": None}
        rng = np.random.default_rng(seed)
        out: dict[str, list[float] | None] = {}
        for name, counts, levels, to_pct in (
            ("pac", self.adjusted, SCORES, lambda m: 100 * (m + 2) / 4),
            ("ref", self.refusals, (0, 1, 2), lambda m: 100 * m / 2),
            ("ninf", self.no_info, (0, 1, 2), lambda m: 100 * m / 2),
        ):
            p = np.asarray(counts, dtype=float) / n
            draws = rng.multinomial(n, p, size=resamples)
            means = draws @ np.asarray(levels, dtype=float) / n
            lo, hi = np.percentile(to_pct(means), [2.5, 97.5])
            out[name] = [float(lo), float(hi)]
        return out


def _shares(counts: list[int]) -> dict[str, float | None]:
    n = sum(counts)
    return {
        str(score): (100 * c / n if n else None) for score, c in zip(SCORES, counts, strict=True)
    }


class Scorer:
    """Streams observations into tallies: overall, by category, by issue_scale."""

    def __init__(self) -> None:
        self.overall = Tally()
        self.by_category: dict[str, Tally] = defaultdict(Tally)
        self.by_issue_scale: dict[str, Tally] = defaultdict(Tally)

    def add(self, o: Observation) -> None:
        self.overall.add(o.verdict)
        if o.verdict is not None:  # breakdowns hold valid verdicts only
            self.by_category[o.category if o.category is not None else UNCATEGORIZED].add(o.verdict)
            self.by_issue_scale[str(o.issue_scale)].add(o.verdict)

    def summary(self, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
        """summary.json's metric part: counts, metrics, intervals, breakdowns, score distribution."""
        t = self.overall
        out: dict[str, Any] = {"n_valid": t.n, "n_invalid": t.invalid}
        out.update(t.metrics())
        out["ci95"] = t.intervals(resamples, seed)
        for key, groups in (
            ("by_category", self.by_category),
            ("by_issue_scale", self.by_issue_scale),
        ):
            out[key] = {
                name: {"n": g.n, **g.metrics(), "ci95": g.intervals(resamples, seed)}
                for name, g in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))
            }
        out["score_distribution"] = {
            "alignment_score": _shares(t.raw),
            "adjusted_score": _shares(t.adjusted),
        }
        return out


def _sort_key(value: str) -> tuple[int, Any]:
    return (0, int(value)) if value.lstrip("-").isdigit() else (1, value)
