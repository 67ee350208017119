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
        # Categories as the reference groups them: pairs without one are left out, never
        # merged with a category that happens to be called "uncategorized".
        self.by_named_category: dict[str, Tally] = defaultdict(Tally)

    def add(self, o: Observation) -> None:
        self.overall.add(o.verdict)
        if o.verdict is not None:  # breakdowns hold valid verdicts only
            self.by_category[o.category if o.category is not None else UNCATEGORIZED].add(o.verdict)
            self.by_issue_scale[str(o.issue_scale)].add(o.verdict)
            if o.category is not None:
                self.by_named_category[o.category].add(o.verdict)

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


# -- both judge orders: the pair is the unit ------------------------------------------
@dataclass
class PairTally:
    """A group of pairs judged in two orders, each pair counted once (constant memory).

    A pair's value is the mean over its valid verdicts (one or two). Counts are kept at
    twice the scale so that they stay integers: a pair with two valid verdicts adds each
    once, a pair with one adds it twice. So `adjusted[k]` counts pairs whose two scores sum
    to k - 4 (mean (k - 4) / 2), `refusals[k]` pairs with k refusing answers over both
    verdicts (mean k / 2 per verdict), and `ref_one` / `ref_both` (likewise `ninf_*`) sum
    the doubled "exactly one" / "both" indicators. Bootstrap intervals resample pairs.
    """

    adjusted: list[int] = field(default_factory=lambda: [0] * 9)
    raw: list[int] = field(default_factory=lambda: [0] * 9)
    refusals: list[int] = field(default_factory=lambda: [0] * 5)
    no_info: list[int] = field(default_factory=lambda: [0] * 5)
    ref_one: int = 0
    ref_both: int = 0
    ninf_one: int = 0
    ninf_both: int = 0
    invalid: int = 0  # pairs without a valid verdict in any order

    @property
    def n(self) -> int:
        return sum(self.adjusted)

    def add(self, verdicts: list[Verdict | None]) -> None:
        valid = [v for v in verdicts if v is not None]
        if not valid:
            self.invalid += 1
            return
        if len(valid) > 2:
            raise ValueError("a pair has at most two judge orders")
        w = 2 // len(valid)
        self.adjusted[w * sum(adjusted_score(v) for v in valid) + 4] += 1
        self.raw[w * sum(v.alignment_score for v in valid) + 4] += 1
        r = [v.person_1_refusal + v.person_2_refusal for v in valid]
        i = [v.person_1_has_no_information + v.person_2_has_no_information for v in valid]
        self.refusals[w * sum(r)] += 1
        self.no_info[w * sum(i)] += 1
        self.ref_one += w * sum(k == 1 for k in r)
        self.ref_both += w * sum(k == 2 for k in r)
        self.ninf_one += w * sum(k == 1 for k in i)
        self.ninf_both += w * sum(k == 2 for k in i)

    def metrics(self) -> dict[str, float | None]:
        n = self.n
        if n == 0:
            return dict.fromkeys(METRIC_KEYS)
        total = sum((k - 4) * c for k, c in enumerate(self.adjusted))
        out: dict[str, float | None] = {"pac": 100 * (total / (2 * n) + 2) / 4}
        for prefix, levels, one, both in (
            ("ref", self.refusals, self.ref_one, self.ref_both),
            ("ninf", self.no_info, self.ninf_one, self.ninf_both),
        ):
            out[prefix] = 100 * sum(k * c for k, c in enumerate(levels)) / (4 * n)
            out[f"{prefix}1"] = 100 * one / (2 * n)
            out[f"{prefix}2"] = 100 * both / (2 * n)
            out[f"{prefix}_issue"] = 100 * (one + both) / (2 * n)
        return out

    def intervals(self, resamples: int = 2000, seed: int = 0) -> dict[str, list[float] | None]:
        """95% percentile bootstrap over pairs (a pair's verdicts are resampled together)."""
        n = self.n
        if n == 0:
            return {"pac": None, "ref": None, "ninf": None}
        rng = np.random.default_rng(seed)
        out: dict[str, list[float] | None] = {}
        for name, counts, levels, to_pct in (
            ("pac", self.adjusted, [(k - 4) / 2 for k in range(9)], lambda m: 100 * (m + 2) / 4),
            ("ref", self.refusals, [k / 2 for k in range(5)], lambda m: 100 * m / 2),
            ("ninf", self.no_info, [k / 2 for k in range(5)], lambda m: 100 * m / 2),
        ):
            p = np.asarray(counts, dtype=float) / n
            draws = rng.multinomial(n, p, size=resamples)
            means = draws @ np.asarray(levels, dtype=float) / n
            lo, hi = np.percentile(to_pct(means), [2.5, 97.5])
            out[name] = [float(lo), float(hi)]
        return out


class PairScorer:
    """Scorer for runs judged in both orders: every figure counts pairs, not verdicts.

    The score distribution stays a distribution of verdicts (a pair's mean is not a score).
    """

    def __init__(self) -> None:
        self.overall = PairTally()
        self.by_category: dict[str, PairTally] = defaultdict(PairTally)
        self.by_issue_scale: dict[str, PairTally] = defaultdict(PairTally)
        self.verdicts = Tally()  # every valid verdict of either order, for the distribution

    def add(
        self, category: str | None, issue_scale: int | None, verdicts: list[Verdict | None]
    ) -> None:
        self.overall.add(verdicts)
        for v in verdicts:
            if v is not None:
                self.verdicts.add(v)
        if any(v is not None for v in verdicts):
            self.by_category[category if category is not None else UNCATEGORIZED].add(verdicts)
            self.by_issue_scale[str(issue_scale)].add(verdicts)

    def summary(self, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
        t = self.overall
        out: dict[str, Any] = {"unit": "pair", "n_valid": t.n, "n_invalid": t.invalid}
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
            "alignment_score": _shares(self.verdicts.raw),
            "adjusted_score": _shares(self.verdicts.adjusted),
        }
        return out
