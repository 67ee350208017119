"""`merge`: the finished shards of a --shard run combined into one run directory."""

from __future__ import annotations

import argparse

from evaluator.cli.common import emit
from evaluator.config import ConfigError
from evaluator.dataset import DatasetError
from evaluator.run import EXIT_OK, UserError
from evaluator.store import StoreError


def cmd_merge(args: argparse.Namespace) -> int:
    from evaluator.merge import MergeError, merge_shards

    try:
        summary = merge_shards(args.out, args.shards)
    except MergeError as exc:
        raise UserError(f"merge: {exc}") from None
    except (StoreError, DatasetError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "report.md").read_text(encoding="utf-8"))
    emit(
        f"merged {len(args.shards)} shards ({summary['n_pairs']} pairs) into {args.out}/ "
        "(summary.json, results.jsonl, report.md)"
    )
    return EXIT_OK
