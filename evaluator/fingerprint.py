"""The dataset's identity is its content: each pair the run evaluates is stored in the
checkpoint with a digest of its row, and a resume or a report refuses a dataset whose
rows differ from the ones the run read.

What is stored and hashed: every column of the pair as validated (id, the questions, the
issue, the context columns, issue_scale, category) and, in a judge-only run, the answers:
everything that enters a request or the scoring, and everything results.jsonl shows. The
row is canonical JSON (orjson, schema order), its digest 16 bytes of blake2b; rows are
zlib-compressed in the checkpoint. A pair is stored when the run admits it, so the stored
pairs are always the first pairs of the run in file order (a prefix); once the reader has
reached the end of the dataset the run is marked complete for its --limit and --shard.

The check streams the dataset once. Against the stored prefix it finds rows *edited*
(same id, other content), *removed* (stored, no longer there) and *added* (a new id among
the evaluated rows, or anywhere once the run had read the whole dataset). New rows after
the prefix of a run that stopped early are not a change: they were never read. A smaller
--limit checks only the pairs within it.

Because the checkpoint holds every pair, `report` rebuilds all outputs from it alone when
the dataset file is gone (`stored_pairs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from evaluator.dataset import Answers, DatasetError, Pair, describe_source, raw_rows
from evaluator.sharding import run_pairs
from evaluator.store import MetaValue, PairRow, Store, pair_digest

if TYPE_CHECKING:
    from evaluator.config import RunConfig

TRACKED_META = "dataset_rows"  # set when a run starts: it stores its pairs (older runs did not)
COMPLETE_META = "dataset_rows_complete"  # {"limit", "shard", "pairs"}: every run pair is stored
EXAMPLES = 5  # ids named per kind of change


class DatasetChanged(DatasetError):
    """The dataset's rows are not the ones the run evaluated (the message says which)."""


def record(pair: Pair) -> bytes:
    """A pair's row as canonical JSON: its columns in schema order, then its answers."""
    row: dict[str, Any] = pair.columns()
    if pair.answers is not None:
        row["answers"] = asdict(pair.answers)
    return orjson.dumps(row)


def from_record(row: bytes) -> Pair:
    data = orjson.loads(row)
    answers = data.pop("answers", None)
    return Pair(**data, answers=Answers(**answers) if answers is not None else None)


def stored_row(pair: Pair, seq: int) -> PairRow:
    """What the scheduler queues for the writer when it admits a pair."""
    return PairRow(pair.id, seq, record(pair))


def complete_marker(config: RunConfig, pairs: int) -> MetaValue:
    """Queued once the reader has admitted every pair of the run."""
    return MetaValue(COMPLETE_META, {"limit": config.limit, "shard": config.shard, "pairs": pairs})


def start_fresh(store: Store) -> None:
    """A run that starts with no call recorded: its pairs are stored from the first one."""
    store.clear_pairs({COMPLETE_META: None, TRACKED_META: 1})


def tracked(store: Store) -> bool:
    return bool(store.get_meta(TRACKED_META))


def _complete_for(store: Store, config: RunConfig) -> bool:
    mark = store.get_meta(COMPLETE_META)
    return bool(mark) and mark.get("limit") == config.limit and mark.get("shard") == config.shard


class Fingerprint:
    """One hash over the digests of the pairs, in order (summary.json `dataset_fingerprint`)."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.pairs = 0

    def add(self, pair: Pair) -> None:
        self._hash.update(pair_digest(record(pair)))
        self.pairs += 1

    def hexdigest(self) -> str:
        return "blake2b-128:" + self._hash.hexdigest()


@dataclass
class _Kind:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)

    def describe(self, verb: str) -> str:
        rows = "row" if self.count == 1 else "rows"
        more = ", ..." if self.count > len(self.examples) else ""
        ids = "id" if self.count == 1 else "ids"
        return f"{self.count} {rows} {verb} ({ids} {', '.join(self.examples)}{more})"


@dataclass
class Comparison:
    """How the dataset's rows compare with the run's stored pairs."""

    stored: int
    matched: int = 0  # stored pairs found with the same content
    added: _Kind = field(default_factory=_Kind)
    removed: _Kind = field(default_factory=_Kind)
    edited: _Kind = field(default_factory=_Kind)

    @property
    def changed(self) -> bool:
        return bool(self.added.count or self.removed.count or self.edited.count)

    def describe(self) -> str:
        parts = [
            kind.describe(verb)
            for kind, verb in (
                (self.removed, "removed"),
                (self.edited, "edited"),
                (self.added, "added"),
            )
            if kind.count
        ]
        return ", ".join(parts)


def compare(config: RunConfig, store: Store) -> Comparison:
    """Stream the run's pairs from the dataset and compare them with the stored ones."""
    out = Comparison(stored=store.pair_count())
    complete = _complete_for(store, config)
    seen: set[int] = set()
    for pair in run_pairs(config):
        seen.add(pair.id)
        row = record(pair)
        digest = store.pair_digest(pair.id)
        if digest is None:
            # A new id among the rows already evaluated, or anywhere once all were read.
            if complete or out.matched + out.edited.count < out.stored:
                out.added.add(str(pair.id))
        elif digest == pair_digest(row):
            out.matched += 1
        elif out.edited.count < EXAMPLES:  # name the columns of the first few
            out.edited.add(f"{pair.id}: {', '.join(_changed_columns(store, pair.id, row))}")
        else:
            out.edited.add(str(pair.id))
    cut_by_limit = config.limit is not None and len(seen) >= config.limit
    if not cut_by_limit:  # a smaller --limit leaves stored pairs outside it: not removed
        for pair_id in store.iter_pair_ids():
            if pair_id not in seen:
                out.removed.add(str(pair_id))
    return out


def _changed_columns(store: Store, pair_id: int, row: bytes) -> list[str]:
    before = orjson.loads(store.pair_row(pair_id) or b"{}")
    after = orjson.loads(row)
    return [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]


def verify(config: RunConfig, store: Store, *, action: str) -> int | None:
    """Refuse (DatasetChanged) a dataset whose rows differ from the run's stored pairs.

    Returns how many of the run's pairs are stored (the scheduler stores the rest as it
    admits them), or None for a run started by a version that did not store its pairs
    (nothing to check, nothing stored). `action` names what is refused ("resume", "report").
    """
    if not tracked(store):
        return None
    if store.pair_count() == 0:
        return 0
    result = compare(config, store)
    if result.changed:
        raise DatasetChanged(
            f"refusing to {action}: {describe_source(config.data)} is not the dataset this run "
            f"evaluated ({result.describe()}); {action}ing would mix two datasets. Restore the "
            "original file"
            + (
                ", or move it away: `report` then rebuilds the outputs from the checkpoint alone"
                if action == "report"
                else ", or start a new run with another --out (`--reuse DIR` copies every "
                "answer whose request is unchanged)"
            )
        )
    return result.matched


def unavailable(config: RunConfig) -> str | None:
    """Why the run's dataset cannot be read now (None: it can)."""
    try:
        next(iter(raw_rows(config.data, config.split)), None)
    except DatasetError as exc:
        return str(exc)
    return None


def stored_pairs(store: Store) -> Iterator[Pair]:
    """The run's pairs as stored in its checkpoint, in the run's order."""
    for _pair_id, _digest, row in store.iter_pair_rows():
        yield from_record(row)


def complete(store: Store, config: RunConfig) -> bool:
    """Whether every pair of the run (for its --limit and --shard) is stored."""
    return _complete_for(store, config)
