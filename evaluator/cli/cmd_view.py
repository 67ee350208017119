"""`view`: a local, read-only web viewer of runs, pair by pair."""

from __future__ import annotations

import argparse

from evaluator.cli.common import emit


def cmd_view(args: argparse.Namespace) -> int:
    from evaluator.view.commands import view

    return view(args.dirs, args.host, args.port, emit)
