"""What a run directory guarantees: its outputs are never overwritten without the
checkpoint they were built from (the checkpoint is the source of truth; docs/failures.md,
"What a run directory guarantees").

`run` (fresh or `--resume`) refuses a directory that holds outputs of a run but no
usable checkpoint: missing, empty, not SQLite, or damaged (evaluator.store checks the
file itself and says which). Read commands open the checkpoint read-only (Store.open).
"""

from __future__ import annotations

from pathlib import Path

from evaluator.report.csvs import BY_CATEGORY_CSV, BY_ISSUE_SCALE_CSV
from evaluator.report.parquet import PARQUET
from evaluator.store import DB_NAME, StoreError, check_file

OUTPUTS = (
    "results.jsonl",
    PARQUET,
    "summary.json",
    "report.md",
    "report.html",
    BY_ISSUE_SCALE_CSV,
    BY_CATEGORY_CSV,
    "alignment_statistics.csv",
    "category_metrics.csv",
    "plots",
)


def outputs_in(run_dir: Path) -> list[str]:
    """The run outputs present in `run_dir` (names, in OUTPUTS order)."""
    return [name for name in OUTPUTS if (run_dir / name).exists()]


def refuse_overwrite(run_dir: Path, outputs: list[str], why: str) -> StoreError:
    return StoreError(
        f"{run_dir} holds the outputs of a run ({', '.join(outputs)}) but {why}; they are not "
        "overwritten. Restore the checkpoint (then `python -m evaluator report DIR` or "
        "--resume), or move the outputs away, or choose another --out"
    )


def check_before_run(run_dir: Path) -> None:
    """Before `run` opens the directory: refuse (StoreError) outputs with no usable checkpoint
    behind them, and a checkpoint that is not SQLite (CheckpointCorrupt)."""
    if not run_dir.is_dir():
        return
    path = run_dir / DB_NAME
    size = check_file(path)
    outputs = outputs_in(run_dir)
    if size is None and path.with_name(DB_NAME + "-wal").exists():
        raise StoreError(
            f"{path} is missing but its journal {DB_NAME}-wal is there: restore the "
            "checkpoint, or remove both and choose a new --out"
        )
    if outputs and size is None:
        raise refuse_overwrite(run_dir, outputs, f"no checkpoint ({DB_NAME} is missing)")
    if outputs and size == 0:
        raise refuse_overwrite(run_dir, outputs, f"its checkpoint {DB_NAME} is empty (0 bytes)")
