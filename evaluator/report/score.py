"""`score FILE`: metrics and report files from an existing verdict file (ours or the
reference pipeline's: id, category, issue_scale, alignment_judge_response)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evaluator import reference_outputs
from evaluator.dataset import DatasetError, as_int, jsonl_rows, parquet_rows
from evaluator.report.join import verdict_or_error
from evaluator.report.outputs import write_summary_files
from evaluator.scoring import Observation, Scorer

SCORE_MARKERS = ("alignment_judge_response",)


def _verdict_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"verdict file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return jsonl_rows(path, SCORE_MARKERS)
    if suffix in (".parquet", ".pq"):
        return parquet_rows(path, str(path), SCORE_MARKERS)
    raise DatasetError(f"{path}: unknown verdict file format {suffix!r} (use .jsonl or .parquet)")


def score_file(path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a verdict file (id, category, issue_scale, alignment_judge_response)."""
    scorer = Scorer()
    rows = 0
    unreadable: list[str] = []
    reasons: dict[str, int] = {}
    for _where, row in _verdict_rows(path):
        if not isinstance(row, dict):  # a line that is not JSON at all: no pair to count
            unreadable.append(str(row))
            continue
        verdict, err = verdict_or_error(row.get("alignment_judge_response"))
        if err:
            reasons[err.split(" (")[0]] = reasons.get(err.split(" (")[0], 0) + 1
        category = row.get("category")
        category = category if isinstance(category, str) and category else None
        pair_id = as_int(row.get("id"))
        rows += 1
        scorer.add(
            Observation(
                pair_id if pair_id is not None else -1,
                category,
                as_int(row.get("issue_scale")),
                verdict,
            )
        )
    if not rows:
        raise DatasetError(f"{path} holds no verdict rows")
    summary: dict[str, Any] = {
        "source": str(path),
        "unreadable_rows": unreadable,
        "invalid_reasons": reasons,
    }
    summary.update(scorer.summary())
    summary["reference_files"] = reference_outputs.tables(scorer.overall, scorer.by_named_category)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary_files(out_dir, summary)
    return summary
