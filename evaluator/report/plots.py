"""The report's pictures (matplotlib, headless): score distribution, PAC by issue awareness,
and PAC / refusal / no-information by category. Simulated or sample runs say so on the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on GPU nodes or CI
import matplotlib.pyplot as plt  # noqa: E402

PLOT_FILES = {
    "score_distribution": "score_distribution.png",
    "pac_by_issue_scale": "pac_by_issue_scale.png",
    "by_category": "metrics_by_category.png",
}
_COLORS = {"pac": "#3b6ea8", "ref_issue": "#d08a2e", "ninf_issue": "#7a9c4a", "raw": "#9aa5b1"}


def _label(summary: dict[str, Any]) -> str | None:
    parts = []
    if summary.get("simulated"):
        parts.append("SIMULATED backend: not a real model")
    if summary.get("sample"):
        parts.append("bundled SAMPLE, not the VAL-Bench dataset")
    return " · ".join(parts) or None


def _finish(fig, ax, summary: dict[str, Any], path: Path) -> None:
    label = _label(summary)
    if label:
        fig.text(0.5, 0.005, label, ha="center", va="bottom", fontsize=8, color="#b03030")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout(rect=(0, 0.03 if label else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_distribution(summary: dict[str, Any], path: Path) -> None:
    dist = summary["score_distribution"]
    scores = ["-2", "-1", "0", "1", "2"]
    raw = [dist["alignment_score"][s] or 0 for s in scores]
    adj = [dist["adjusted_score"][s] or 0 for s in scores]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = range(len(scores))
    ax.bar([i - 0.2 for i in x], raw, 0.4, label="judge's score", color=_COLORS["raw"])
    ax.bar([i + 0.2 for i in x], adj, 0.4, label="refusal-adjusted", color=_COLORS["pac"])
    ax.set_xticks(list(x), ["-2\nopposed", "-1", "0\nmixed", "+1", "+2\naligned"])
    ax.set_ylabel("% of valid verdicts")
    ax.set_title(f"Alignment scores (n = {summary['n_valid']})")
    ax.legend(frameon=False)
    _finish(fig, ax, summary, path)


def pac_by_issue_scale(summary: dict[str, Any], path: Path) -> None:
    groups = summary["by_issue_scale"]
    names = list(groups)
    pac = [groups[g]["pac"] or 0 for g in names]
    lows = [
        max(0.0, p - (groups[g].get("ci95", {}).get("pac") or [p, p])[0])
        for g, p in zip(names, pac, strict=True)
    ]
    highs = [
        max(0.0, (groups[g].get("ci95", {}).get("pac") or [p, p])[1] - p)
        for g, p in zip(names, pac, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.bar(names, pac, color=_COLORS["pac"], yerr=[lows, highs], capsize=4)
    for i, g in enumerate(names):
        ax.text(i, 2, f"n={groups[g]['n']}", ha="center", color="white", fontsize=8)
    if summary.get("pac") is not None:
        ax.axhline(
            summary["pac"], color="#444", lw=1, ls="--", label=f"overall {summary['pac']:.1f}"
        )
        ax.legend(frameon=False, loc="upper left")
    ax.set_ylim(0, 118)  # room above the bars for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("issue awareness (issue_scale: 1 obscure - 5 widely known)")
    ax.set_ylabel("PAC (%), 95% bootstrap interval")
    ax.set_title("Pairwise alignment consistency by issue awareness")
    _finish(fig, ax, summary, path)


def by_category(summary: dict[str, Any], path: Path) -> None:
    groups = summary["by_category"]
    names = sorted(groups, key=lambda g: groups[g]["pac"] or 0)
    fig, ax = plt.subplots(figsize=(7.2, max(3.0, 0.42 * len(names) + 1.2)))
    height = 0.27
    for k, (key, label) in enumerate(
        (
            ("pac", "PAC"),
            ("ref_issue", "issue-level refusal"),
            ("ninf_issue", "issue-level no-info"),
        )
    ):
        ax.barh(
            [i + (k - 1) * height for i in range(len(names))],
            [groups[g][key] or 0 for g in names],
            height,
            label=label,
            color=_COLORS[key],
        )
    ax.set_yticks(range(len(names)), [f"{g} (n={groups[g]['n']})" for g in names], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.set_title("By category")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    _finish(fig, ax, summary, path)


def write_plots(out_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Draw every plot into out_dir/plots; returns {name: relative path}."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    written = {}
    for name, draw in (
        ("score_distribution", score_distribution),
        ("pac_by_issue_scale", pac_by_issue_scale),
        ("by_category", by_category),
    ):
        if summary["n_valid"] == 0:
            break
        draw(summary, plot_dir / PLOT_FILES[name])
        written[name] = f"plots/{PLOT_FILES[name]}"
    return written
