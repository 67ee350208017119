"""`compare`: a leaderboard across runs (Markdown, CSV, PNG)."""

from __future__ import annotations

import argparse

from evaluator.cli.common import damaged_checkpoints, emit
from evaluator.run import EXIT_OK, UserError


def cmd_compare(args: argparse.Namespace) -> int:
    from evaluator.analysis.compare import compare
    from evaluator.analysis.run_files import AnalysisError

    damaged_checkpoints(args.dirs)
    try:
        compare(args.dirs, args.out, force=args.force)
    except AnalysisError as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "compare.md").read_text(encoding="utf-8"))
    emit(f"written: {args.out}/compare.md, compare.csv, compare.png")
    return EXIT_OK
