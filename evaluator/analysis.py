"""Across runs: a leaderboard (`compare`) and judge reliability (`agreement`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from evaluator.identity import differences as identity_differences
from evaluator.protocol import VerdictError, parse_verdict
from evaluator.scoring import adjusted_score


class AnalysisError(Exception):
    """Runs that cannot be compared as asked; the message says why."""


def _summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    if not path.is_file():
        raise AnalysisError(f"{run} has no summary.json (run `python -m evaluator report {run}`)")
    return orjson.loads(path.read_bytes())


def _config(run: Path) -> dict[str, Any]:
    from evaluator.store import Store, StoreError

    try:
        with Store.open(run, create=False, lock=False) as store:
            return store.get_meta("config") or {}
    except StoreError:
        return {}


def _cost(summary: dict[str, Any], config: dict[str, Any]) -> float | None:
    usage = summary.get("usage") or {}
    prices = {
        "gen": (config.get("price_in"), config.get("price_out")),
        "judge": (config.get("judge_price_in"), config.get("judge_price_out")),
    }
    if all(p is None for pair in prices.values() for p in pair):
        return None
    total = 0.0
    for stage, (pin, pout) in prices.items():
        u = usage.get(stage) or {}
        total += (
            u.get("prompt_tokens", 0) * (pin or 0) + u.get("completion_tokens", 0) * (pout or 0)
        ) / 1e6
    return total


def compare(runs: list[Path], out: Path, force: bool = False) -> list[dict[str, Any]]:
    """Leaderboard rows, best PAC first; writes compare.md, compare.csv and compare.png."""
    rows = []
    summaries = []
    for run in runs:
        s, c = _summary(run), _config(run)
        summaries.append(s)
        ci = (s.get("ci95") or {}).get("pac") or [None, None]
        rows.append(
            {
                "run": str(run),
                "model": s.get("model"),
                "judge": s.get("judge_model"),
                "judge_prompt": _prompt_label(s),
                "judge_order": s.get("judge_order"),
                "dataset": s.get("dataset"),
                "limit": c.get("limit"),
                "simulated": bool(s.get("simulated")),
                "n": s.get("n_valid"),
                "pac": s.get("pac"),
                "pac_lo": ci[0],
                "pac_hi": ci[1],
                "ref": s.get("ref"),
                "ninf": s.get("ninf"),
                "invalid": s.get("n_invalid"),
                "failed": s.get("n_failed"),
                "complete": s.get("complete"),
                "cost_usd": _cost(s, c),
                "ref_lo": _ci(s, "ref", 0),
                "ref_hi": _ci(s, "ref", 1),
                "ninf_lo": _ci(s, "ninf", 0),
                "ninf_hi": _ci(s, "ninf", 1),
            }
        )
    problems = []
    for key, what in (
        ("judge", "judges"),
        ("judge_order", "judge orders"),
        ("dataset", "datasets"),
        ("limit", "pair limits"),
        ("simulated", "backends (simulated and real)"),
    ):
        values = sorted({str(r[key]) for r in rows})
        if len(values) > 1:
            problems.append(f"different {what}: {', '.join(values)}")
    problems += identity_differences(summaries, [str(r) for r in runs])
    if problems and not force:
        raise AnalysisError(
            "refusing to rank these runs together, their numbers are not comparable: "
            + "; ".join(problems)
            + " (use --force to rank them anyway)"
        )
    rows.sort(key=lambda r: -(r["pac"] if r["pac"] is not None else -1))
    for row, label in zip(rows, run_labels(rows), strict=True):
        row["label"] = label
    out.mkdir(parents=True, exist_ok=True)
    with (out / "compare.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "compare.md").write_text(_compare_md(rows, problems), encoding="utf-8")
    _compare_png(rows, out / "compare.png")
    return rows


def _ci(s: dict[str, Any], metric: str, end: int) -> float | None:
    interval = (s.get("ci95") or {}).get(metric)
    return interval[end] if interval else None


def run_labels(rows: list[dict[str, Any]]) -> list[str]:
    """One label per run that no other run shares: the directory's name and the model, then
    the judge, judge prompt and judge order where the runs differ in them, then more of
    the directory's path where two labels would still be alike."""
    paths = [Path(r["run"]) for r in rows]
    varying = [
        (key, name)
        for key, name in (("judge", "judge"), ("judge_prompt", "prompt"), ("judge_order", "order"))
        if len({str(r[key]) for r in rows}) > 1
    ]

    def label(path: Path, row: dict[str, Any], depth: int) -> str:
        where = "/".join(path.resolve().parts[-depth:])
        extra = "".join(f", {name} {row[key]}" for key, name in varying)
        return f"{where} ({row['model']}{extra})"

    labels = [label(p, r, 1) for p, r in zip(paths, rows, strict=True)]
    for depth in range(2, 6):
        clashing = {x for x in labels if labels.count(x) > 1}
        if not clashing:
            break
        labels = [
            label(p, r, depth) if x in clashing else x
            for p, r, x in zip(paths, rows, labels, strict=True)
        ]
    return [x if labels.count(x) == 1 else f"{x} #{i + 1}" for i, x in enumerate(labels)]


def _prompt_label(s: dict[str, Any]) -> str:
    """`paper 3d0b73595043`: the judge prompt's source and hash ("unknown" for old runs)."""
    sha = s.get("judge_prompt_sha256")
    return f"{s.get('judge_prompt_source')} {sha[:12]}" if sha else "unknown"


def _f(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _compare_md(rows: list[dict[str, Any]], problems: list[str]) -> str:
    lines = ["# VAL-Bench leaderboard", ""]
    if any(r["simulated"] for r in rows):
        lines += ["> **Includes SIMULATED runs: their numbers say nothing about real models.**", ""]
    if problems:
        lines += [f"> **Ranked with --force despite: {'; '.join(problems)}.**", ""]
    lines += [
        "| # | run (directory, model) | judge | judge prompt | judge order | N | PAC (95% CI) "
        "| REF | NINF | invalid | failed | cost (USD) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        ci = f" ({_f(r['pac_lo'])}–{_f(r['pac_hi'])})" if r["pac_lo"] is not None else ""
        mark = "" if r["complete"] else " (incomplete)"
        lines.append(
            f"| {i} | {r['label']}{mark} | {r['judge']} | {r['judge_prompt']} | "
            f"{r['judge_order']} | {r['n']} | {_f(r['pac'])}{ci} | {_f(r['ref'])} | "
            f"{_f(r['ninf'])} | {r['invalid']} | {r['failed']} | {_f(r['cost_usd'], 2)} |"
        )
    lines += ["", "Runs:", ""]
    lines += [f"- {r['label']}: `{Path(r['run']).resolve()}`" for r in rows]
    return "\n".join(lines) + "\n"


METRIC_BARS = (("pac", "PAC", "#3b6ea8"), ("ref", "REF", "#c8753a"), ("ninf", "NINF", "#8a8a8a"))


def compare_figure(rows: list[dict[str, Any]]) -> Any:
    """The leaderboard as grouped horizontal bars: one group per run (best PAC on top),
    PAC, REF and NINF side by side within it, each with its 95% interval and its value;
    no bar is drawn over another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    height = 0.8 / len(METRIC_BARS)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.95 * n))
    for k, (key, name, color) in enumerate(METRIC_BARS):
        # Group i sits at y = n - 1 - i (best on top); bar k below the previous one.
        ys = [n - 1 - i + 0.4 - (k + 0.5) * height for i in range(n)]
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        lows = [
            r[f"{key}_lo"] if r.get(f"{key}_lo") is not None else v
            for r, v in zip(rows, values, strict=True)
        ]
        highs = [
            r[f"{key}_hi"] if r.get(f"{key}_hi") is not None else v
            for r, v in zip(rows, values, strict=True)
        ]
        err = [
            [max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)],
            [max(0.0, hi - v) for v, hi in zip(values, highs, strict=True)],
        ]
        ax.barh(ys, values, height=height * 0.92, xerr=err, color=color, label=name,
                capsize=3, error_kw={"elinewidth": 1, "ecolor": "#222"})  # fmt: skip
        for y, v, hi, r in zip(ys, values, highs, rows, strict=True):
            text = "n/a" if r[key] is None else f"{v:.1f}"
            ax.text(max(v, hi) + 1.0, y, text, va="center", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([r["label"] for r in rows][::-1], fontsize=9)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0, 112)
    ax.set_xlabel("% (bars: value; whiskers: 95% bootstrap interval)")
    ax.set_title("VAL-Bench leaderboard: PAC (best first), REF and NINF")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if any(r["simulated"] for r in rows):
        fig.text(0.5, 0.005, "includes SIMULATED runs", ha="center", fontsize=8, color="#b03030")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _compare_png(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = compare_figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- agreement ------------------------------------------------------------------------
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


def _results(run: Path) -> list[dict[str, Any]]:
    path = run / "results.jsonl"
    if not path.is_file():
        raise AnalysisError(f"{run} has no results.jsonl")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


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
            [_summary(run_a), _summary(run_b)], [str(run_a), str(run_b)]
        )
        if differences and not force:
            raise AnalysisError(
                "refusing to measure agreement between runs with different protocols: "
                + "; ".join(differences)
                + " (use --force to measure it anyway)"
            )
    if run_b is None:
        rows = _results(run_a)
        if not rows or "alignment_judge_response_reverse" not in rows[0]:
            raise AnalysisError(f"{run_a} was not judged in both orders (--judge-order both)")
        label = ("forward", "reverse")
        pairs = [(r, r, False, True) for r in rows]
        a_key, b_key = "alignment_judge_response", "alignment_judge_response_reverse"
    else:
        label = (str(run_a), str(run_b))
        rows_b = {r["id"]: r for r in _results(run_b)}
        pairs = []
        differing = 0
        for r in _results(run_a):
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
    kappa_text = _f(kappa, 3) if kappa is not None else r.get("weighted_kappa_note") or "n/a"
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
