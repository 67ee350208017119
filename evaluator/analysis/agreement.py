"""Judge reliability (`agreement`): two judges on the same pairs, or one judge's two orders
of the same pair, compared by quadratic-weighted kappa with a bootstrap interval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.analysis.run_files import AnalysisError, read_results, read_summary, shown
from evaluator.identity import differences as identity_differences
from evaluator.protocol import VerdictError, parse_verdict
from evaluator.scoring import adjusted_score


@dataclass(frozen=True)
class _Judged:
    score: int
    adjusted: int
    refusals: tuple[bool, bool]  # (for side, against side)


def _judged(raw: Any, reverse: bool) -> _Judged | None:
    try:
        v = parse_verdict(raw)
    except VerdictError:
        return None
    flags = (v.person_1_refusal, v.person_2_refusal)
    # In reverse order person 1 answered the "against" question: put the flags back by side.
    return _Judged(v.alignment_score, adjusted_score(v), flags[::-1] if reverse else flags)


KAPPA_UNDEFINED = (
    "undefined: both judges gave one and the same score on every pair, so the agreement "
    "expected by chance is already perfect and kappa is 0/0"
)


def weighted_kappa(a: np.ndarray, b: np.ndarray, levels: int = 5) -> float | None:
    """Cohen's kappa with quadratic weights, for ordinal scores coded 0..levels-1.

    None where kappa is undefined: no pairs, or both raters constant at the same level
    (the chance-expected disagreement, the denominator, is zero). That case used to be
    reported as 1.0, which claims a reliability the data cannot show.
    """
    if len(a) == 0:
        return None
    observed = np.zeros((levels, levels))
    np.add.at(observed, (a, b), 1)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((levels, levels))
    weights = (i - j) ** 2 / (levels - 1) ** 2
    denominator = (weights * expected).sum()
    if denominator == 0:
        return None
    return float(1 - (weights * observed).sum() / denominator)


def agreement(
    run_a: Path, run_b: Path | None, resamples: int = 2000, seed: int = 0, force: bool = False
) -> dict[str, Any]:
    """Two judges (or the two orders of one run) over the same generations.

    Two runs must share their protocol (judge prompt, judge schema, sampling; the answers
    are checked pair by pair) unless `force`; the differences are then in the result."""
    differences: list[str] = []
    if run_b is not None:
        differences = identity_differences(
            [read_summary(run_a), read_summary(run_b)], [str(run_a), str(run_b)]
        )
        if differences and not force:
            raise AnalysisError(
                "refusing to measure agreement between runs with different protocols: "
                + "; ".join(differences)
                + " (use --force to measure it anyway)"
            )
    if run_b is None:
        rows = read_results(run_a)
        if not rows or "alignment_judge_response_reverse" not in rows[0]:
            raise AnalysisError(f"{run_a} was not judged in both orders (--judge-order both)")
        label = ("forward", "reverse")
        pairs = [(r, r, False, True) for r in rows]
        a_key, b_key = "alignment_judge_response", "alignment_judge_response_reverse"
    else:
        label = (str(run_a), str(run_b))
        rows_b = {r["id"]: r for r in read_results(run_b)}
        pairs = []
        differing = 0
        for r in read_results(run_a):
            other = rows_b.get(r["id"])
            if other is None:
                continue
            if (r["for_response"], r["against_response"]) != (
                other["for_response"],
                other["against_response"],
            ):
                differing += 1
                continue
            pairs.append((r, other, False, False))
        if differing:
            raise AnalysisError(
                f"{differing} pairs have different generations in the two runs: agreement "
                "compares judges over the same answers (use --reuse to judge one run's answers again)"
            )
        a_key = b_key = "alignment_judge_response"
    both = []
    for ra, rb, rev_a, rev_b in pairs:
        ja, jb = _judged(ra.get(a_key), rev_a), _judged(rb.get(b_key), rev_b)
        if ja is not None and jb is not None:
            both.append((ja, jb))
    n = len(both)
    if n == 0:
        raise AnalysisError("no pair has a valid verdict in both")
    sa = np.array([x.score for x, _ in both])
    sb = np.array([y.score for _, y in both])
    adj_a = np.array([x.adjusted for x, _ in both], dtype=float)
    adj_b = np.array([y.adjusted for _, y in both], dtype=float)
    pac_a, pac_b = 100 * (adj_a.mean() + 2) / 4, 100 * (adj_b.mean() + 2) / 4
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for k in range(resamples):  # paired: the same resampled pairs for both judges
        idx = rng.integers(0, n, n)
        diffs[k] = 25 * (adj_a[idx].mean() - adj_b[idx].mean())
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    kappa = weighted_kappa(sa + 2, sb + 2)
    return {
        "a": label[0],
        "b": label[1],
        "n_pairs": n,
        "protocol_differences": differences,
        "exact_agreement": float((sa == sb).mean()),
        "sign_agreement": float((np.sign(sa) == np.sign(sb)).mean()),
        "weighted_kappa_quadratic": kappa,
        "weighted_kappa_note": KAPPA_UNDEFINED if kappa is None else None,
        "refusal_flag_agreement": float(np.mean([x.refusals == y.refusals for x, y in both])),
        "pac_a": float(pac_a),
        "pac_b": float(pac_b),
        "pac_difference": float(pac_a - pac_b),
        "pac_difference_ci95": [float(lo), float(hi)],
    }


def agreement_markdown(r: dict[str, Any]) -> str:
    forced = (
        [f"> **Measured with --force despite: {'; '.join(r['protocol_differences'])}.**", ""]
        if r.get("protocol_differences")
        else []
    )
    kappa = r["weighted_kappa_quadratic"]
    kappa_text = shown(kappa, 3) if kappa is not None else r.get("weighted_kappa_note") or "n/a"
    return "\n".join(
        [
            "# Judge agreement",
            "",
            *forced,
            f"- A: `{r['a']}`",
            f"- B: `{r['b']}`",
            f"- pairs with a valid verdict in both: {r['n_pairs']}",
            "",
            "| measure | value |",
            "|---|---|",
            f"| exact agreement on the -2..2 score | {r['exact_agreement']:.3f} |",
            f"| sign agreement | {r['sign_agreement']:.3f} |",
            f"| weighted Cohen's kappa (quadratic) | {kappa_text} |",
            f"| refusal-flag agreement | {r['refusal_flag_agreement']:.3f} |",
            f"| PAC A − PAC B (points) | {r['pac_difference']:.2f} "
            f"({r['pac_difference_ci95'][0]:.2f} to {r['pac_difference_ci95'][1]:.2f}, paired bootstrap 95%) |",
            "",
        ]
    )
