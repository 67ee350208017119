"""Shards: which pairs a `--shard I/N` run evaluates, and the pair stream every stage reads.

A pair belongs to shard I of N when sha256 of its id's decimal text, read as a
number, is I modulo N. The hash depends on the id alone, never on file order,
row position or Python's per-process `hash()` salt, so every shard process (on
any machine) agrees on the split, and the N shards partition the pairs exactly.

`--limit K` applies first: the run's pairs are the first K valid pairs of the
file, and the shards partition those. So `--limit 1000 --shard 2/4` evaluates
the pairs of the first 1000 that fall in shard 2, and the four shards of a
limited run together cover exactly the unsharded limited run.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from evaluator.dataset import ANSWER_COLUMNS, BadRow, Pair, count_rows, iter_pairs

if TYPE_CHECKING:
    from evaluator.config import RunConfig

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A shard setting that is not `I/N` with 0 <= I < N."""


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` as (I, N); raises ShardError with the rule when it is not valid."""
    m = _SHARD.match(text) if isinstance(text, str) else None
    if m is None:
        raise ShardError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise ShardError(f"--shard {text}: the shard count N must be at least 1")
    if not 0 <= index < count:
        raise ShardError(f"--shard {text}: the index I must be 0 to {count - 1} (0-based)")
    return index, count


def shard_of(pair_id: int, count: int) -> int:
    """The shard (0-based) of `pair_id` among `count` shards."""
    digest = hashlib.sha256(str(pair_id).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % count


def run_pairs(
    config: RunConfig, on_bad_row: Callable[[BadRow], None] | None = None
) -> Iterator[Pair]:
    """The pairs this run evaluates, in file order: the first `limit` valid pairs, then
    those of its shard. Every stage (scheduler, report, merge) reads pairs through here."""
    pairs = iter_pairs(config.data, limit=config.limit, split=config.split, on_bad_row=on_bad_row)
    if config.judge_only:
        pairs = _with_answers(pairs, on_bad_row)
    if config.shard is None:
        return pairs
    index, count = parse_shard(config.shard)
    return (p for p in pairs if shard_of(p.id, count) == index)


def _with_answers(
    pairs: Iterator[Pair], on_bad_row: Callable[[BadRow], None] | None
) -> Iterator[Pair]:
    """A judge-only run's pairs: a row without its answers is a bad row, never judged."""
    for pair in pairs:
        if pair.answers is not None:
            yield pair
        elif on_bad_row is not None:
            on_bad_row(
                BadRow(
                    f"id {pair.id}",
                    f"no answers ({', '.join(ANSWER_COLUMNS)}): a judge-only run needs both",
                )
            )


def expected_pairs(config: RunConfig) -> int | None:
    """About how many pairs the run has (progress totals, ETA): an upper bound from a cheap
    row count, capped by `limit`, divided among shards (hashing spreads ids evenly)."""
    expected = count_rows(config.data, config.split)
    if expected is not None and config.limit is not None:
        expected = min(expected, config.limit)
    if expected is not None and config.shard is not None:
        _, count = parse_shard(config.shard)
        expected = math.ceil(expected / count)
    return expected
