"""`agreement`: judge reliability, two runs over the same answers or one run's two orders."""

from __future__ import annotations

import argparse

import orjson

from evaluator.cli.common import damaged_checkpoints, emit
from evaluator.run import EXIT_OK, UserError


def cmd_agreement(args: argparse.Namespace) -> int:
    from evaluator.analysis.agreement import agreement, agreement_markdown
    from evaluator.analysis.run_files import AnalysisError

    damaged_checkpoints([args.dir_a, args.dir_b])
    try:
        result = agreement(args.dir_a, args.dir_b, force=args.force)
    except AnalysisError as exc:
        raise UserError(str(exc)) from None
    text = agreement_markdown(result)
    emit(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "agreement.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        (args.out / "agreement.md").write_text(text, encoding="utf-8")
    return EXIT_OK
