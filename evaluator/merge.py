"""`merge OUT SHARD_DIR...`: the shards of one run become one ordinary run directory.

Checks, each failing with a one-line message that names the shard directory:
every directory is a finished (not running) shard run; all were run with the
same request settings, dataset, limit and shard count; the indices 0..N-1 are
each present exactly once; no shard holds calls of another shard's pairs; and
every pair of every shard has its outcome (an incomplete shard is finished with
`--resume` on its own directory first).

OUT then gets its own checkpoint with every shard's calls copied in, and the
usual outputs are built from it exactly as for an unsharded run, so `report`,
`status`, `compare` and `agreement` work on OUT, and `--resume --out OUT` has
nothing left to send.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from evaluator import fingerprint, report
from evaluator.config import REQUEST_SETTINGS, ConfigError, RunConfig
from evaluator.sharding import parse_shard, run_pairs, shard_of
from evaluator.store import DB_NAME, Store, StoreError

# What must be equal across shards: what is sent, and which pairs the run has.
SAME_ACROSS_SHARDS = tuple(n for n in REQUEST_SETTINGS if n != "shard") + ("limit", "simulated")


class MergeError(Exception):
    """The shards cannot be merged as given; the message says which and why."""


@dataclasses.dataclass
class _Shard:
    dir: Path
    store: Store
    config: RunConfig
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count} ({self.dir})"


def _open_shard(path: Path) -> _Shard:
    try:
        store = Store.open(path, create=False, lock=False)
    except StoreError as exc:
        raise MergeError(str(exc)) from None
    try:
        pid = store.holder()
        if pid is not None:
            raise MergeError(f"{path} is still running (pid {pid}); merge once it has finished")
        raw = store.get_meta("config")
        if raw is None:
            raise MergeError(f"{path} holds no run config")
        try:
            config = RunConfig.from_dict(raw)
        except (ConfigError, TypeError) as exc:
            raise MergeError(f"{path}: run config this version cannot read: {exc}") from None
        if config.shard is None:
            raise MergeError(f"{path} is not a shard: it was run without --shard")
        index, count = parse_shard(config.shard)
        return _Shard(path, store, config, index, count)
    except BaseException:
        store.close()
        raise


def _check_same_run(shards: list[_Shard]) -> None:
    first = shards[0]
    for other in shards[1:]:
        if other.count != first.count:
            raise MergeError(
                f"different config: {other.dir} is shard {other.config.shard} but {first.dir} "
                f"is shard {first.config.shard} (shard counts differ)"
            )
        diffs = [
            f"{n}: {getattr(first.config, n)!r:.60} vs {getattr(other.config, n)!r:.60}"
            for n in SAME_ACROSS_SHARDS
            if getattr(first.config, n) != getattr(other.config, n)
        ]
        if diffs:
            raise MergeError(
                f"different config: {other.dir} and {first.dir} are not shards of one run ("
                + "; ".join(diffs)
                + ")"
            )


def _check_indices(shards: list[_Shard]) -> None:
    count = shards[0].count
    by_index: dict[int, _Shard] = {}
    for shard in shards:
        if shard.index in by_index:
            raise MergeError(
                f"overlapping shards: {by_index[shard.index].dir} and {shard.dir} are both "
                f"shard {shard.index}/{count}"
            )
        by_index[shard.index] = shard
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise MergeError(
            f"missing shard(s) {', '.join(missing)}: pass all {count} shard directories "
            f"(given: {', '.join(str(s.dir) for s in sorted(shards, key=lambda s: s.index))})"
        )


def _check_coverage(shards: list[_Shard], config: RunConfig) -> None:
    """Each shard's calls belong to its own pairs, and each shard has every pair finished."""
    count = shards[0].count
    for shard in shards:
        stray = [p for p in shard.store.pair_ids() if shard_of(p, count) != shard.index]
        if stray:
            raise MergeError(
                f"overlapping shards: {shard.dir} ({shard.config.shard}) holds calls of "
                f"{len(stray)} pair(s) of other shards (e.g. id {stray[0]}, which belongs to "
                f"shard {shard_of(stray[0], count)}/{count})"
            )
    by_index = {s.index: s for s in shards}
    status = report.PairStatus(config)
    pending = dict.fromkeys(by_index, 0)
    totals = dict.fromkeys(by_index, 0)
    for pair in run_pairs(config):  # the unsharded run's pairs, read once
        shard = by_index[shard_of(pair.id, count)]
        totals[shard.index] += 1
        if status(pair, shard.store.calls_for_pair(pair.id)) == "pending":
            pending[shard.index] += 1
    incomplete = [by_index[i] for i in sorted(pending) if pending[i]]
    if incomplete:
        raise MergeError(
            "incomplete shard(s): "
            + "; ".join(
                f"{s.name} has {pending[s.index]} of {totals[s.index]} pairs unfinished "
                f"(finish it with `python -m evaluator --resume --out {s.dir}`)"
                for s in incomplete
            )
        )


def _prepare_out(out: Path, shards: list[_Shard]) -> None:
    """OUT may be new, or an earlier merge (rebuilt); never a shard or another run."""
    resolved = out.resolve()
    for shard in shards:
        if shard.dir.resolve() == resolved:
            raise MergeError(f"OUT {out} is one of the shards; choose another directory")
    if not (out / DB_NAME).exists():
        return
    try:
        with Store.open(out, create=False) as existing:
            earlier_merge = existing.get_meta("merged_from") is not None
            holds_run = existing.get_meta("config") is not None
    except StoreError as exc:
        raise MergeError(f"OUT {out}: {exc}") from None
    if holds_run and not earlier_merge:
        raise MergeError(f"OUT {out} holds a run that is not a merge; choose another directory")
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (out / name).unlink(missing_ok=True)


def _merge_pairs(store: Store, shards: list[_Shard], config: RunConfig) -> None:
    """The shards' stored pairs (evaluator.fingerprint), in the unsharded run's order."""
    if not all(fingerprint.tracked(s.store) for s in shards):
        return  # a shard started by an older version stored none: OUT tracks none either
    store.renumber_pairs(p.id for p in run_pairs(config))
    store.set_meta(fingerprint.TRACKED_META, 1)
    if all(fingerprint.complete(s.store, s.config) for s in shards):
        store.set_meta(
            fingerprint.COMPLETE_META,
            {"limit": config.limit, "shard": None, "pairs": store.pair_count()},
        )


def merge_shards(out: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check the shards, build OUT from them; returns OUT's summary. Raises MergeError."""
    shards: list[_Shard] = []
    try:
        for path in shard_dirs:
            shards.append(_open_shard(path))
        _check_same_run(shards)
        _check_indices(shards)
        shards.sort(key=lambda s: s.index)
        # The merged run is the unsharded run; it starts no servers of its own.
        config = dataclasses.replace(shards[0].config, shard=None, vllm=None, judge_vllm=None)
        _check_coverage(shards, config)
        _prepare_out(out, shards)
        try:
            store = Store.open(out)
        except StoreError as exc:
            raise MergeError(f"OUT {out}: {exc}") from None
        with store:
            for shard in shards:
                store.absorb(shard.store.path)
            _merge_pairs(store, shards, config)
            store.set_meta("config", config.to_dict())
            store.set_meta(
                "possibly_duplicated_calls", sum(s.store.possibly_duplicated() for s in shards)
            )
            store.set_meta(
                "merged_from",
                [{"shard": s.config.shard, "dir": str(s.dir)} for s in shards],
            )
            return report.build_run_outputs(out, config, store)
    finally:
        for shard in shards:
            shard.store.close()
