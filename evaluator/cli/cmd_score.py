"""`score`: metrics from an existing verdict file (JSONL or Parquet)."""

from __future__ import annotations

import argparse
import sys

from evaluator import report
from evaluator.cli.common import emit
from evaluator.dataset import DatasetError
from evaluator.run import EXIT_OK, UserError


def cmd_score(args: argparse.Namespace) -> int:
    try:
        summary = report.score_file(args.file, args.out)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "report.md").read_text(encoding="utf-8"))
    if summary["n_invalid"]:
        print(
            f"{summary['n_invalid']} invalid verdicts: {summary['invalid_reasons']}",
            file=sys.stderr,
        )
    return EXIT_OK
