"""The run's report: a results join, then independent writers.

    join.py          a pair + its calls -> its results.jsonl row; the summary's tallies
    outputs.py       build_run_outputs: results.jsonl and summary.json, then the writers
    csvs.py          metrics_by_*.csv and the reference pipeline's CSVs
    markdown.py      report.md
    html_page.py     report.html (report.md through markdown-it-py, plots inlined)
    share.py         report.html's "pairs worth reading"
    parquet.py       results.parquet
    plots.py         the PNG plots (matplotlib)
    child.py         the side process's handle (parquet and plots on another core)
    child_process.py that process (`python -m evaluator.report.child_process`)
    score.py         `score FILE`: the same files from a verdict file

The names other modules use are importable from here, loaded on first use (PEP 562):
the side process runs as a submodule of this package, and its niced start must not pay
for importing the store, the config and the rest first.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluator.report.csvs import BY_CATEGORY_CSV, BY_ISSUE_SCALE_CSV
    from evaluator.report.join import PairRows, PairStatus
    from evaluator.report.markdown import SHOWN_FAILURE_GROUPS, failure_lines, render_markdown
    from evaluator.report.markdown import fmt as _fmt  # noqa: F401
    from evaluator.report.outputs import (
        FINISHED_META,
        MAX_FAILURE_GROUPS,
        RESULTS_TMP,
        ReportInterrupted,
        build_run_outputs,
        write_summary_files,
    )
    from evaluator.report.parquet import PARQUET, ParquetSink
    from evaluator.report.score import score_file

_EXPORTS = {  # name here -> (submodule, name there)
    "BY_CATEGORY_CSV": ("csvs", "BY_CATEGORY_CSV"),
    "BY_ISSUE_SCALE_CSV": ("csvs", "BY_ISSUE_SCALE_CSV"),
    "PairRows": ("join", "PairRows"),
    "PairStatus": ("join", "PairStatus"),
    "SHOWN_FAILURE_GROUPS": ("markdown", "SHOWN_FAILURE_GROUPS"),
    "failure_lines": ("markdown", "failure_lines"),
    "render_markdown": ("markdown", "render_markdown"),
    "_fmt": ("markdown", "fmt"),  # the CLI's terminal summary (evaluator.cli.common)
    "FINISHED_META": ("outputs", "FINISHED_META"),
    "MAX_FAILURE_GROUPS": ("outputs", "MAX_FAILURE_GROUPS"),
    "RESULTS_TMP": ("outputs", "RESULTS_TMP"),
    "ReportInterrupted": ("outputs", "ReportInterrupted"),
    "build_run_outputs": ("outputs", "build_run_outputs"),
    "write_summary_files": ("outputs", "write_summary_files"),
    "PARQUET": ("parquet", "PARQUET"),
    "ParquetSink": ("parquet", "ParquetSink"),
    "score_file": ("score", "score_file"),
}
__all__ = [  # every name of _EXPORTS but _fmt
    "BY_CATEGORY_CSV",
    "BY_ISSUE_SCALE_CSV",
    "FINISHED_META",
    "MAX_FAILURE_GROUPS",
    "PARQUET",
    "PairRows",
    "PairStatus",
    "ParquetSink",
    "RESULTS_TMP",
    "ReportInterrupted",
    "SHOWN_FAILURE_GROUPS",
    "build_run_outputs",
    "failure_lines",
    "render_markdown",
    "score_file",
    "write_summary_files",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f"evaluator.report.{module}"), attr)
    globals()[name] = value  # once: later lookups do not come here
    return value
