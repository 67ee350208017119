"""report.md: the summary as Markdown (report.html is rendered from it, evaluator.report.html_page)."""

from __future__ import annotations

from typing import Any

from evaluator.scoring import METRIC_KEYS

SIMULATION_BANNER = (
    "SIMULATION: answers and verdicts come from the project's simulated backend, "
    "not from a language model. These numbers say nothing about any real model."
)
SAMPLE_BANNER = (
    "SAMPLE: the bundled sample of our own pairs in the VAL-Bench schema, "
    "not the VAL-Bench dataset."
)
SHOWN_FAILURE_GROUPS = 5  # summary.json has up to MAX_FAILURE_GROUPS (evaluator.report.outputs)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.4f}"


def _cost_lines(cost: dict[str, Any]) -> list[str]:
    """Tokens and estimated cost per stage (prices: the price table or the --price flags)."""
    lines = [
        "| stage | calls | input tokens | output tokens | estimated cost | price (USD/M in, out) |",
        "|---|---|---|---|---|---|",
    ]
    for stage, label in (("gen", "generation"), ("judge", "judge")):
        c = cost.get(stage) or {}
        price = c.get("price")
        price_text = f"{price['input']:g}, {price['output']:g}" if price else "unknown"
        usd = _usd(c.get("usd")) if price else "unknown"
        lines.append(
            f"| {label} | {c.get('calls', 0)} | {c.get('tokens_in', 0)} | "
            f"{c.get('tokens_out', 0)} | {usd} | {price_text} |"
        )
    total = f"- Estimated cost: {_usd(cost.get('total_usd'))}"
    if cost.get("projected_total_usd") is not None:
        total += f", projected for the whole run {_usd(cost['projected_total_usd'])}"
    if cost.get("max_cost_usd") is not None:
        total += f", budget (--max-cost) ${cost['max_cost_usd']:g}"
    return [*lines, "", total, ""]


def failure_lines(failures: list[dict[str, Any]]) -> list[str]:
    """The top failure messages with their counts (summary.json `failures` has them all)."""
    shown = failures[:SHOWN_FAILURE_GROUPS]
    lines = [
        "## Failures",
        "",
        "| calls | stage | class | HTTP | message (first of its kind) | e.g. pair |",
        "|---|---|---|---|---|---|",
    ]
    for f in shown:
        message = str(f["message"]).replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {f['count']} | {f['stage']} | {f['class']} | {f['http_status'] or ''} | "
            f"{message} | {f['example_pair_id']} |"
        )
    if len(failures) > len(shown):
        lines.append("")
        lines.append(f"{len(failures) - len(shown)} more kinds of failure in summary.json.")
    lines += [
        "",
        "Fix the cause, then send the failed calls again with "
        "`python -m evaluator --resume --out DIR --retry-failed`.",
        "",
    ]
    return lines


def render_markdown(s: dict[str, Any], images: dict[str, str] | None = None) -> str:
    lines = ["# VAL-Bench report", ""]
    if s.get("simulated"):
        lines += [f"> **{SIMULATION_BANNER}**", ""]
    if s.get("sample"):
        lines += [f"> **{SAMPLE_BANNER}**", ""]
    if s.get("complete") is False:
        lines += [
            f"> **INCOMPLETE RUN: {s['n_pending']} pairs not finished. Resume it with "
            "`python -m evaluator --resume --out DIR`.**",
            "",
        ]
    for key, label in (
        ("dataset", "Dataset"),
        ("source", "Verdict file"),
        ("model", "Model"),
        ("judge_model", "Judge"),
        ("judge_order", "Judge order"),
        ("limit", "Limit (first valid pairs)"),
    ):
        if s.get(key) is not None:
            lines.append(f"- {label}: `{s[key]}`")
    if s.get("judge_prompt_sha256"):
        lines.append(
            f"- Judge prompt: {s['judge_prompt_source']} ({s['judge_prompt_origin']}), "
            f"sha256 `{s['judge_prompt_sha256']}`"
            + ("" if s["judge_prompt_source"] == "paper" else " (not the paper's prompt)")
        )
        lines.append(
            f"- Generation system prompt: {s['system_prompt_source']}, "
            f"sha256 `{s['system_prompt_sha256']}`"
        )
    if s.get("judge_only"):
        lines.append("- Answers: from the dataset (a judge-only run: no generation call was made)")
    if s.get("shard"):
        lines.append(
            f"- Shard: `{s['shard']}` (only the pairs whose id hashes to this shard; "
            "merge all shards with `python -m evaluator merge`)"
        )
    if s.get("merged_from"):
        shards = s["merged_from"]
        lines.append(
            f"- Merged from {len(shards)} shards: "
            + ", ".join(f"`{m['shard']}` {m['dir']}" for m in shards)
        )
    if s.get("unit") == "pair":  # both judge orders: the top-level counts are pairs
        counts = [
            f"pairs with a valid verdict {s['n_valid']}",
            f"pairs without one {s['n_invalid']}",
        ]
    else:
        counts = [f"valid verdicts {s['n_valid']}", f"invalid verdicts {s['n_invalid']}"]
    if "n_failed" in s:
        counts += [
            f"failed pairs {s['n_failed']}",
            f"bad input rows {s['n_bad_rows']}",
            f"answers cut at max tokens {s['n_truncated_answers']}",
            f"answers withheld by the provider (counted as refusals) "
            f"{s.get('n_provider_refusals', 0)}",
            f"calls possibly paid twice {s['possibly_duplicated_calls']}",
        ]
        if s.get("failures_by_class"):
            failed = ", ".join(f"{k} {v}" for k, v in sorted(s["failures_by_class"].items()))
            counts.append(f"failed calls by class: {failed}")
    lines += [f"- Counts: {', '.join(counts)}", ""]
    if s.get("failures"):
        lines += failure_lines(s["failures"])
    if s.get("cost"):
        lines += _cost_lines(s["cost"])
    ci = s["ci95"]
    lines += ["| metric | value (%) | 95% bootstrap interval |", "|---|---|---|"]
    names = {
        "pac": "PAC (pairwise alignment consistency)",
        "ref": "REF (response refusal)",
        "ref1": "REF1 (exactly one refuses)",
        "ref2": "REF2 (both refuse)",
        "ref_issue": "Issue-level refusal",
        "ninf": "NINF (response no-information)",
        "ninf1": "NINF1 (exactly one)",
        "ninf2": "NINF2 (both)",
        "ninf_issue": "Issue-level no-information",
    }
    for k in METRIC_KEYS:
        interval = ci.get(k)
        ci_text = f"{interval[0]:.2f} – {interval[1]:.2f}" if interval else ""
        lines.append(f"| {names[k]} | {fmt(s[k])} | {ci_text} |")
    if "by_judge_order" in s:
        lines += [
            "",
            "Top-level figures pool both judge orders with the pair as the unit: a pair counts "
            "once, with the mean of its valid verdicts, and the intervals resample pairs.",
            "",
            "| judge order | n | PAC | REF | NINF |",
            "|---|---|---|---|---|",
        ]
        for order, m in s["by_judge_order"].items():
            lines.append(
                f"| {order} | {m['n_valid']} | {fmt(m['pac'])} | {fmt(m['ref'])} | {fmt(m['ninf'])} |"
            )
    for title, key in (
        ("By issue awareness (issue_scale)", "by_issue_scale"),
        ("By category", "by_category"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| group | n | PAC | issue-level refusal | issue-level no-information |",
            "|---|---|---|---|---|",
        ]
        for name, m in s[key].items():
            lines.append(
                f"| {name} | {m['n']} | {fmt(m['pac'])} | {fmt(m['ref_issue'])} | {fmt(m['ninf_issue'])} |"
            )
    images = images or {}
    captions = {
        "score_distribution": "Score distribution",
        "pac_by_issue_scale": "PAC by issue awareness",
        "by_category": "PAC, refusal and no-information by category",
    }
    if images:
        lines += ["", "## Plots"]
        for name, path in images.items():  # a paragraph each: report.html makes each a figure
            lines += ["", f"![{captions[name]}]({path})"]
    dist = s["score_distribution"]
    lines += [
        "",
        "## Score distribution (% of valid verdicts)",
        "",
        "| score | -2 | -1 | 0 | +1 | +2 |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("judge score", "alignment_score"), ("refusal-adjusted", "adjusted_score")):
        lines.append(
            f"| {label} | " + " | ".join(fmt(dist[key][str(v)]) for v in (-2, -1, 0, 1, 2)) + " |"
        )
    return "\n".join(lines) + "\n"
