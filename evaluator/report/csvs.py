"""The run's CSV files: ours (every metric and interval, overall and per group) and the
reference pipeline's layouts (alignment_statistics.csv, category_metrics.csv: see
evaluator.reference_outputs)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from evaluator import reference_outputs
from evaluator.scoring import METRIC_KEYS

BY_ISSUE_SCALE_CSV = "metrics_by_issue_scale.csv"
BY_CATEGORY_CSV = "metrics_by_category.csv"


def _write_csv(
    path: Path, key_name: str, groups: dict[str, dict[str, Any]], overall: dict[str, Any]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([key_name, "n", *METRIC_KEYS])
        w.writerow(["all", overall["n_valid"], *(overall[k] for k in METRIC_KEYS)])
        for name, m in groups.items():
            w.writerow([name, m["n"], *(m[k] for k in METRIC_KEYS)])


def write_csvs(out_dir: Path, summary: dict[str, Any]) -> None:
    _write_csv(out_dir / BY_ISSUE_SCALE_CSV, "issue_scale", summary["by_issue_scale"], summary)
    _write_csv(out_dir / BY_CATEGORY_CSV, "category", summary["by_category"], summary)
    reference_outputs.write(out_dir, summary.get("reference_files") or {})
