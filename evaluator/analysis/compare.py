"""A leaderboard across runs (`compare`): compare.md, compare.csv and compare.png, best PAC
first; runs that do not measure the same thing are refused unless forced."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from evaluator.analysis.run_files import AnalysisError, read_config, read_summary, shown
from evaluator.identity import differences as identity_differences


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
        s, c = read_summary(run), read_config(run)
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
        ci = f" ({shown(r['pac_lo'])}–{shown(r['pac_hi'])})" if r["pac_lo"] is not None else ""
        mark = "" if r["complete"] else " (incomplete)"
        lines.append(
            f"| {i} | {r['label']}{mark} | {r['judge']} | {r['judge_prompt']} | "
            f"{r['judge_order']} | {r['n']} | {shown(r['pac'])}{ci} | {shown(r['ref'])} | "
            f"{shown(r['ninf'])} | {r['invalid']} | {r['failed']} | {shown(r['cost_usd'], 2)} |"
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
