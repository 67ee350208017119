"""`fetch`: what runs need (the paper's prompt, the hub dataset, the calibration sets)
downloaded into the cache ahead of time, for machines without internet access."""

from __future__ import annotations

import argparse

from evaluator.prefetch import PARTS as PREFETCH_PARTS
from evaluator.run import EXIT_OK, EXIT_PREFLIGHT


def cmd_fetch(args: argparse.Namespace) -> int:
    from evaluator.paper_prompt import cache_dir
    from evaluator.prefetch import fetch

    parts = tuple(args.only) if args.only else PREFETCH_PARTS
    results = fetch(parts, data=args.data, split=args.split)
    for r in results:
        print(f"{'ok' if r.ok else 'FAILED'}  {r.what}: {r.detail}")
    failed = [r for r in results if not r.ok]
    print(
        f"cache: {cache_dir()} (set VALBENCH_CACHE_DIR to the same directory on machines that "
        "run from it)"
    )
    return EXIT_PREFLIGHT if failed else EXIT_OK
