"""The viewer's side index of one run: a row of small columns per pair, and search text.

Built once per directory by streaming the run's pairs (evaluator.sharding.run_pairs) and
joining each with its calls in the checkpoint, exactly as the report builds results.jsonl
(report.PairRows), so what the viewer lists is what the report will write. Then refreshed:
only the pairs with a call written since the last look are read again (CheckpointReader.
changed_pairs), so a page stays current while a run goes without rereading the run.

The index lives in a temporary directory of the viewer (never in the run directory). It
holds no answers (those are read from the checkpoint for the one pair a page shows), only
what lists and filters need, and a contentless FTS5 index of the questions and answers
(the words' positions, not the text). Where SQLite lacks FTS5 the text is kept in a plain
table and searched with LIKE.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from evaluator.config import RunConfig
from evaluator.dataset import Answers, Pair
from evaluator.report.join import PairRows
from evaluator.sharding import run_pairs
from evaluator.view.checkpoint import CheckpointReader, ViewError

BATCH = 500
SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,           -- position in the run's pairs (results.jsonl order)
    category TEXT,
    issue_scale INTEGER,
    status TEXT NOT NULL,           -- scored | invalid | failed | pending
    score1 INTEGER,                 -- the judge's alignment_score, first judge order
    score2 INTEGER,                 -- second judge order (--judge-order both), else NULL
    adj1 INTEGER,                   -- refusal-adjusted scores
    adj2 INTEGER,
    refusals INTEGER,               -- sides flagged as refusing in the first valid verdict
    no_info INTEGER,                -- sides flagged as having no information (same verdict)
    failure TEXT,                   -- error classes of the failed calls, space-separated
    error TEXT,
    gap INTEGER,                    -- |score1 - score2|
    texts INTEGER NOT NULL DEFAULT 0 -- answers in the search index: 1 for, 2 against
);
-- Apart, so that the table the filters scan stays narrow (a few dozen bytes a pair).
CREATE TABLE IF NOT EXISTS pair_data (
    id INTEGER PRIMARY KEY,
    question TEXT NOT NULL,         -- the for question (the list shows it)
    pair TEXT NOT NULL              -- the dataset row, less section_text (to rebuild the Pair)
);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Made once a build has inserted every pair (inserting into five indexes row by row costs
# more than sorting once); until then a page scans the part built so far.
INDEXES = {
    "pairs_seq": "pairs(seq)",
    "pairs_status": "pairs(status, seq)",
    "pairs_score": "pairs(score1, seq)",
    "pairs_gap": "pairs(gap DESC, seq)",
    "pairs_category": "pairs(category, seq)",
    "pairs_failure": "pairs(failure) WHERE failure IS NOT NULL",
}
# Search rows: rowid = pair id * 4 + part (0: issue and questions, 1: for answer, 2: against).
FTS_SCHEMA = "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(text, content='')"
PLAIN_SCHEMA = "CREATE TABLE IF NOT EXISTS search (rowid INTEGER PRIMARY KEY, text TEXT)"
_ERROR_CLASS = re.compile(r"(?:^|; )(?:gen|judge)_\w+: (\w+): ")
_NOT_STORED = ("section_text",)  # up to ~42K characters a pair; the page links the article


def fts5_available() -> bool:
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    return True


def _batches(items: Iterable[Pair], n: int) -> Iterator[list[Pair]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _pair_json(pair: Pair) -> bytes:
    d = {k: v for k, v in pair.columns().items() if k not in _NOT_STORED}
    if pair.answers is not None:  # judge-only: the answers are the dataset's
        d["answers"] = {f: getattr(pair.answers, f) for f in pair.answers.__dataclass_fields__}
    return orjson.dumps(d)


def pair_from_json(text: str | bytes) -> Pair:
    d = orjson.loads(text)
    answers = d.pop("answers", None)
    return Pair(section_text="", answers=Answers(**answers) if answers else None, **d)


def derive(row: dict[str, Any], orders: tuple[str, ...]) -> dict[str, Any]:
    """The index's columns of one results.jsonl row."""
    suffixes = ["" if o == orders[0] else f"_{o}" for o in orders]
    verdicts = [row.get(f"verdict{s}") for s in suffixes] + [None]
    scores = [v["alignment_score"] if v else None for v in verdicts]
    adjusted = [row.get(f"adjusted_score{s}") for s in suffixes] + [None]
    first = next((v for v in verdicts if v), None)
    classes = sorted(set(_ERROR_CLASS.findall(row.get("error") or "")))
    gap = abs(scores[0] - scores[1]) if None not in scores[:2] else None
    return {
        "status": row["status"],
        "score1": scores[0],
        "score2": scores[1],
        "adj1": adjusted[0],
        "adj2": adjusted[1],
        "refusals": first["person_1_refusal"] + first["person_2_refusal"] if first else None,
        "no_info": first["person_1_has_no_information"] + first["person_2_has_no_information"]
        if first
        else None,
        "failure": " ".join(classes) or None,
        "error": row.get("error"),
        "gap": gap,
    }


_DERIVED = (
    "status",
    "score1",
    "score2",
    "adj1",
    "adj2",
    "refusals",
    "no_info",
    "failure",
    "error",
    "gap",
)


class _Writes:
    """One transaction's inserts and updates, sent with executemany."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Any, ...]] = []
        self.data: list[tuple[Any, ...]] = []
        self.updates: list[tuple[Any, ...]] = []
        self.search: list[tuple[int, str]] = []

    def commit(self, db: sqlite3.Connection) -> None:
        with db:
            db.executemany(
                f"INSERT OR REPLACE INTO pairs (id, seq, category, issue_scale, texts, "
                f"{', '.join(_DERIVED)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(_DERIVED))})",
                self.pairs,
            )
            db.executemany("INSERT OR REPLACE INTO pair_data VALUES (?, ?, ?)", self.data)
            db.executemany(
                f"UPDATE pairs SET texts = ?, {', '.join(f'{k} = ?' for k in _DERIVED)} "
                "WHERE id = ?",
                self.updates,
            )
            db.executemany("INSERT INTO search (rowid, text) VALUES (?, ?)", self.search)


class RunIndex:
    """One run directory's side index, built and refreshed on the caller's thread."""

    def __init__(self, run_dir: Path, path: Path, fts: bool | None = None) -> None:
        self.run_dir = run_dir
        self.path = path
        self.reader = CheckpointReader(run_dir)
        self.fts = fts5_available() if fts is None else fts
        self.state = "starting"  # starting | indexing | ready
        self.indexed = 0
        self.error: str | None = None
        self.version = 0  # changes whenever the index does (for caches)
        self.refreshed_at: float | None = None
        self.config: RunConfig | None = None
        self._config_raw: Any = None
        self._last_rowid = 0
        self._conn: sqlite3.Connection | None = None

    # -- lifetime -----------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")  # pages read while it is written
            self._conn.execute("PRAGMA synchronous=OFF")  # a cache: rebuilt if lost
            self._conn.executescript(SCHEMA)
            self._conn.execute(FTS_SCHEMA if self.fts else PLAIN_SCHEMA)
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def read_config(self) -> RunConfig:
        """The run's config from its checkpoint (a clear error for a directory without one)."""
        with self.reader.connect() as ck:
            raw = self.reader.meta(ck, "config")
        if raw is None:
            raise ViewError(f"{self.run_dir} holds no run config (the run never started)")
        return RunConfig.from_dict(raw)

    # -- building -----------------------------------------------------------------
    def build(self, stop: threading.Event | None = None) -> None:
        """Index every pair of the run from scratch."""
        with self.reader.connect() as ck:
            raw = self.reader.meta(ck, "config")
            start_rowid = self.reader.max_rowid(ck)
        if raw is None:
            raise ViewError(f"{self.run_dir} holds no run config (the run never started)")
        config = RunConfig.from_dict(raw)
        db = self._db()
        with db:
            for name in INDEXES:
                db.execute(f"DROP INDEX IF EXISTS {name}")
            db.execute("DELETE FROM pairs")
            db.execute("DELETE FROM pair_data")
            if self.fts:
                db.execute("INSERT INTO search(search) VALUES ('delete-all')")
            else:
                db.execute("DELETE FROM search")
        self.state, self.indexed, self.config, self._config_raw = "indexing", 0, config, raw
        rows_of = PairRows(config)
        seq = 0
        for batch in _batches(run_pairs(config), BATCH):
            if stop is not None and stop.is_set():
                return
            with self.reader.connect() as ck:
                records = self.reader.records(ck, [p.id for p in batch])
            writes = _Writes()
            for pair in batch:
                self._put(writes, pair, rows_of(pair, records[pair.id]), seq, new=True)
                seq += 1
            writes.commit(db)
            self.indexed += len(batch)
            self.version += 1
        with db:
            for name, what in INDEXES.items():
                db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {what}")
        # Outcomes written while the build read the run are read again by the next refresh.
        self._last_rowid = start_rowid
        self.state, self.refreshed_at, self.error = "ready", time.time(), None
        db.execute("INSERT OR REPLACE INTO info VALUES ('built_at', ?)", (str(time.time()),))
        db.commit()

    def refresh(self, stop: threading.Event | None = None) -> int:
        """Bring the index up to date with the checkpoint; returns the pairs updated.

        A changed run config (a resume with other settings) means other calls: rebuild."""
        db = self._db()
        with self.reader.connect() as ck:
            raw = self.reader.meta(ck, "config")
            if raw == self._config_raw:
                changed, top = self.reader.changed_pairs(ck, self._last_rowid)
                known = {
                    i: (seq, text, texts)
                    for i, seq, text, texts in self._select_pairs(db, sorted(changed))
                }
                records = self.reader.records(ck, sorted(known))
        if raw != self._config_raw:
            self.build(stop)
            return self.indexed
        assert self.config is not None
        rows_of = PairRows(self.config)
        writes = _Writes()
        for pair_id, (seq, text, texts) in known.items():
            pair = pair_from_json(text)
            self._put(writes, pair, rows_of(pair, records[pair_id]), seq, new=False, texts=texts)
        writes.commit(db)
        self._last_rowid = top
        self.refreshed_at = time.time()
        if known:
            self.version += 1
        return len(known)

    @staticmethod
    def _select_pairs(db: sqlite3.Connection, ids: list[int]) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            yield from db.execute(
                "SELECT p.id, p.seq, d.pair, p.texts FROM pairs p JOIN pair_data d ON d.id = p.id "
                f"WHERE p.id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )

    def _put(
        self,
        writes: _Writes,
        pair: Pair,
        row: dict[str, Any],
        seq: int,
        *,
        new: bool,
        texts: int = 0,
    ) -> None:
        assert self.config is not None
        d = derive(row, self.config.judge_orders)
        search = []
        if new:
            search.append(
                (
                    pair.id * 4,
                    "\n".join(
                        (
                            pair.article_title,
                            pair.section_title,
                            pair.issue_description,
                            pair.for_question,
                            pair.against_question,
                        )
                    ),
                )
            )
        for bit, part, side in ((1, 1, "for"), (2, 2, "against")):
            answer = row.get(f"{side}_response")
            if answer and not texts & bit:  # an answer, once recorded, never changes
                search.append((pair.id * 4 + part, answer))
                texts |= bit
        derived = tuple(d[k] for k in _DERIVED)
        if new:
            writes.pairs.append((pair.id, seq, pair.category, pair.issue_scale, texts, *derived))
            writes.data.append((pair.id, pair.for_question, _pair_json(pair)))
        else:
            writes.updates.append((texts, *derived, pair.id))
        writes.search.extend(search)

    # -- reading one pair (for its page) ---------------------------------------------
    def pair_row(self, pair_id: int) -> dict[str, Any] | None:
        """A pair's full results.jsonl row as of now (answers read from the checkpoint)."""
        if self.config is None:
            return None
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT pair FROM pair_data WHERE id = ?", (pair_id,)).fetchone()
        finally:
            conn.close()
        if found is None:
            return None
        pair = pair_from_json(found[0])
        with self.reader.connect() as ck:
            records = self.reader.records(ck, [pair_id])[pair_id]
        return PairRows(self.config)(pair, records)
