"""What the analysis commands read of a finished run (summary.json, results.jsonl, the
stored config), the one error they raise, and how a figure is shown in their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


class AnalysisError(Exception):
    """Runs that cannot be compared as asked; the message says why."""


def read_summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    if not path.is_file():
        raise AnalysisError(f"{run} has no summary.json (run `python -m evaluator report {run}`)")
    return orjson.loads(path.read_bytes())


def read_config(run: Path) -> dict[str, Any]:
    from evaluator.store import Store, StoreError

    try:
        with Store.open(run, create=False, lock=False) as store:
            return store.get_meta("config") or {}
    except StoreError:
        return {}


def read_results(run: Path) -> list[dict[str, Any]]:
    path = run / "results.jsonl"
    if not path.is_file():
        raise AnalysisError(f"{run} has no results.jsonl")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def shown(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
