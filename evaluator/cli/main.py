"""`python -m evaluator` / `valbench`: parse, then hand the command to its module."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from evaluator.cli.cmd_agreement import cmd_agreement
from evaluator.cli.cmd_calibrate import cmd_calibrate
from evaluator.cli.cmd_compare import cmd_compare
from evaluator.cli.cmd_demo import cmd_demo
from evaluator.cli.cmd_fetch import cmd_fetch
from evaluator.cli.cmd_merge import cmd_merge
from evaluator.cli.cmd_report import cmd_report
from evaluator.cli.cmd_run import cmd_run
from evaluator.cli.cmd_score import cmd_score
from evaluator.cli.cmd_status import cmd_status
from evaluator.cli.cmd_view import cmd_view
from evaluator.cli.parser import build_parser
from evaluator.config import ConfigError
from evaluator.run import EXIT_INTERNAL, EXIT_USER, UserError
from workers.base import redact

COMMANDS: dict[str, Callable[..., int]] = {
    "run": cmd_run,
    "demo": cmd_demo,
    "score": cmd_score,
    "report": cmd_report,
    "status": cmd_status,
    "compare": cmd_compare,
    "agreement": cmd_agreement,
    "merge": cmd_merge,
    "fetch": cmd_fetch,
    "calibrate": cmd_calibrate,
    "view": cmd_view,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    command = args.command
    if command is None:
        if not args.resume:
            parser.print_help()
            return EXIT_USER
        command = "run"
    try:
        return COMMANDS[command](args)
    except (UserError, ConfigError) as exc:
        # Anything shaped like a key is kept off the terminal (a key given where a URL or
        # a file name was expected would otherwise be echoed back).
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 75
    except Exception:
        logging.getLogger("evaluator").exception("internal error")
        return EXIT_INTERNAL
