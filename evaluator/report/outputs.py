"""A run's outputs: results.jsonl, summary.json, the CSVs, results.parquet, the plots,
report.md and report.html.

Results are assembled by streaming the dataset again and joining each pair with its
calls in the store (evaluator.report.join), so nothing per pair is held in memory except
the few numbers scoring needs. Then each writer does its file from the summary: csvs,
markdown, html_page; parquet and plots in the side process (evaluator.report.child).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from evaluator.config import RunConfig
from evaluator.costs import CostMeter, expected_calls
from evaluator.dataset import SAMPLE, Pair, describe_source
from evaluator.fingerprint import Fingerprint
from evaluator.identity import identity
from evaluator.report.child import ReportChild
from evaluator.report.csvs import write_csvs
from evaluator.report.html_page import render_html
from evaluator.report.join import Tally
from evaluator.report.markdown import render_markdown
from evaluator.report.share import SharePicker
from evaluator.report.share import render as render_share
from evaluator.sharding import run_pairs
from evaluator.store import Store


class ReportInterrupted(Exception):
    """A signal arrived while the outputs were being written: they stopped after one file."""


def _stop_point(should_stop: Callable[[], bool] | None, written: str) -> None:
    if should_stop is not None and should_stop():
        raise ReportInterrupted(f"interrupted while writing the outputs (finished {written})")


RESULTS_TMP = "results.jsonl.tmp"
FINISHED_META = "finished_config"  # the config whose outputs left no pair to do
MAX_FAILURE_GROUPS = 50  # in summary.json; the report and the terminal show the first few


def build_run_outputs(
    run_dir: Path,
    config: RunConfig,
    store: Store,
    side: ReportChild | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    pairs: Iterable[Pair] | None = None,
    pairs_complete: bool = True,
) -> dict[str, Any]:
    """Write every output file of a run from its store; return summary.json's content.

    `side`: the report's side process, when the caller started it early (see
    evaluator.report.child); otherwise one is started here. Closed here in any case.
    `should_stop`: asked after each file; true stops the report (ReportInterrupted).
    `pairs`: the run's pairs when they are not read from the dataset (the checkpoint's,
    evaluator.fingerprint.stored_pairs); `pairs_complete`: whether they are all of them.
    """
    if side is None:
        side = ReportChild(run_dir, run_dir / RESULTS_TMP, config.judge_orders)
    try:
        tmp = run_dir / RESULTS_TMP
        # A few pairs with their answers, for report.html.
        picker = SharePicker(config.judge_orders)
        with tmp.open("wb") as out:
            side.rows_ready()
            summary = _build_run_outputs(
                run_dir, config, store, out, tmp, pairs, pairs_complete, picker
            )
        _stop_point(should_stop, "results.jsonl")
        write_summary_files(run_dir, summary, side, should_stop, share=picker.picked())
        if summary["all_pairs_have_verdicts"] and store.writable:  # a resume has nothing to send
            store.set_meta(FINISHED_META, store.get_meta("config"))
        return summary
    finally:
        side.close()


def _build_run_outputs(
    run_dir: Path,
    config: RunConfig,
    store: Store,
    out: BinaryIO,
    tmp: Path,
    pairs: Iterable[Pair] | None = None,
    pairs_complete: bool = True,
    picker: SharePicker | None = None,
) -> dict[str, Any]:
    """results.jsonl (written through `out`, then renamed) and the summary."""
    tally = Tally(config.judge_orders)
    content = Fingerprint()
    n_pairs = 0
    for pair in run_pairs(config) if pairs is None else pairs:
        n_pairs += 1
        content.add(pair)
        row = tally.pair_row(config, pair, store.calls_for_pair(pair.id))
        out.write(orjson.dumps(row))
        out.write(b"\n")
        if picker is not None:
            picker.add(row)
    out.flush()
    tmp.replace(run_dir / "results.jsonl")

    orders = config.judge_orders
    summary: dict[str, Any] = {
        "simulated": config.simulated,
        "dataset": describe_source(config.data),
        "sample": config.data == SAMPLE,
        "model": config.model,
        "judge_model": config.judge_model,
        "judge_order": config.judge_order,
        **identity(config),
        "judge_only": config.judge_only,
        "limit": config.limit,
        "shard": config.shard,
        # The rows of the pairs the outputs cover, as one hash (evaluator.fingerprint).
        "dataset_fingerprint": content.hexdigest(),
        "pairs_from": "dataset" if pairs is None else "checkpoint",
        "complete": tally.statuses["pending"] == 0 and pairs_complete,
        # The one field a script needs: every pair has a verdict (valid, or invalid after
        # the judge's re-asks); false when any pair failed or has no outcome yet.
        "all_pairs_have_verdicts": tally.statuses["pending"] == 0
        and tally.statuses["failed"] == 0
        and pairs_complete,
        "n_pairs": n_pairs,
        "n_failed": tally.statuses["failed"],
        "n_pending": tally.statuses["pending"],
        "n_bad_rows": len(store.bad_rows()),
        "n_truncated_answers": tally.truncated,
        "n_provider_refusals": tally.provider_refusals,
        "possibly_duplicated_calls": store.possibly_duplicated(),
        "failures_by_class": tally.failures,
        # Failed calls grouped by stage, class, HTTP status and message, largest first.
        "failures": [g.to_dict() for g in tally.failure_groups.top(MAX_FAILURE_GROUPS)],
        "usage": tally.usage,
        "cost": CostMeter.for_run(config, store.iter_usage()).summary(
            expected_calls(n_pairs, len(orders))
        ),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last_session": store.get_meta("last_session"),
    }
    merged = store.get_meta("merged_from")
    if merged:
        summary["merged_from"] = merged
    summary.update(tally.pooled.summary())
    if len(orders) > 1:
        summary["by_judge_order"] = {o: tally.scorers[o].summary() for o in orders}
    summary["reference_files"] = tally.reference_files()
    return summary


def write_summary_files(
    out_dir: Path,
    summary: dict[str, Any],
    side: ReportChild | None = None,
    should_stop: Callable[[], bool] | None = None,
    share: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """summary.json, the CSVs, the plots, report.md and report.html. With `side`, the
    plots (and results.parquet) come from the report's side process; with `share`, pairs
    worth reading (evaluator.report.share) end report.html. `should_stop` is asked after each file
    (ReportInterrupted)."""
    (out_dir / "summary.json").write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    _stop_point(should_stop, "summary.json")
    write_csvs(out_dir, summary)
    _stop_point(should_stop, "the CSV files")
    if side is None:
        from evaluator.report.plots import (
            write_plots,  # matplotlib costs ~0.5 s to import: only here
        )

        images = write_plots(out_dir, summary)
    else:
        images = side.finish(summary)
    _stop_point(should_stop, "the plots and results.parquet")
    markdown = render_markdown(summary, images)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    _stop_point(should_stop, "report.md")
    extra = render_share(share) if share else ""
    (out_dir / "report.html").write_text(render_html(markdown, out_dir, extra), encoding="utf-8")
