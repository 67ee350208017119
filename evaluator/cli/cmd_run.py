"""`run` (and a bare `--resume`): the flags and --config file as a RunConfig, then the run."""

from __future__ import annotations

import argparse
from typing import Any

from evaluator.cli.common import finish, options, remember, resolve_out, run_loop
from evaluator.config import RunConfig, load_overrides, load_run_config
from evaluator.config.loader import KEYS
from evaluator.run import UserError, execute
from evaluator.store import DB_NAME

# The settings a `run` flag can give (argparse stores each under its setting's name).
_NAMES = tuple(sorted(set(KEYS.values())))


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags ({name: value}); a flag left out is absent."""
    return {n: getattr(args, n) for n in _NAMES if getattr(args, n, None) is not None}


def config_from_args(args: argparse.Namespace, *, fetch_paper: bool = True) -> RunConfig | None:
    """A checked RunConfig from `run` flags and --config; None when only --resume was asked for."""
    return load_run_config(
        getattr(args, "config", None),
        flags_from_args(args),
        resume=args.resume,
        fetch_paper=fetch_paper,
    )


def cmd_run(args: argparse.Namespace) -> int:
    args.out = resolve_out(args)
    if args.retry_failed and not args.resume:
        raise UserError("--retry-failed needs --resume (it re-sends the failed calls of a run)")
    if args.resume and (args.out / DB_NAME).is_file():
        # Resuming a started run: its stored config is the base; whatever is given adjusts it.
        config = None
    else:
        config = config_from_args(args)
    overrides = None
    if config is None and args.resume:
        overrides = load_overrides(getattr(args, "config", None), flags_from_args(args))
    remember(args.out)
    result = run_loop(
        execute(args.out, config, resume=args.resume, overrides=overrides, options=options(args))
    )
    return finish(result, print_report=False)
