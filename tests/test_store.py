"""The checkpoint against a real SQLite file in a temp dir: the writer's commit order and
grouping, what a resume reads back, the lock, and what a reader is refused."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from evaluator.store import (
    DB_NAME,
    CallRecord,
    CheckpointCorrupt,
    Intent,
    Store,
    StoreError,
    StoreWriter,
)


def _done(key: str, pair_id: int = 1, role: str = "gen_for", **fields) -> CallRecord:
    return CallRecord(key, pair_id, role, "done", body_sha="sha-" + key, **fields)


def _failed(key: str, pair_id: int, role: str, error: str, status: int | None = 503):
    return CallRecord(
        key, pair_id, role, "failed", body_sha="sha-" + key,
        error_class="transient", error=error, http_status=status,
    )  # fmt: skip


def _status_elsewhere(path, key: str) -> str | None:
    """The call's status as another process would read it (its own connection)."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT status FROM calls WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_an_intent_is_committed_when_intent_returns_and_outcomes_by_close(tmp_path):
    store = Store.open(tmp_path / "run")
    path = store.path

    async def go():
        writer = StoreWriter(store)
        writer.start()
        await writer.intent(Intent("k1", 1, "gen_for", "sha-k1"))
        at_intent = _status_elsewhere(path, "k1")
        writer.put(_done("k1", content="an answer", usage={"prompt_tokens": 5}))
        await writer.close()
        return at_intent, writer.committed

    at_intent, committed = asyncio.run(go())
    assert at_intent == "started"  # durable before the request may leave
    assert _status_elsewhere(path, "k1") == "done" and committed == 1
    store.close()


def test_outcomes_queued_together_are_committed_together(tmp_path):
    store = Store.open(tmp_path / "run")
    commits: list[tuple[float, float]] = []

    async def go():
        writer = StoreWriter(store, on_commit=lambda took, lag: commits.append((took, lag)))
        writer.start()
        for i in range(500):  # queued while no commit can run (the loop is busy here)
            writer.put(_done(f"k{i}", pair_id=i))
        await writer.close()
        return writer.committed, writer.commits

    committed, total_commits = asyncio.run(go())
    assert committed == 500
    assert len(commits) == 1 and total_commits == 1  # one group commit, not 500
    assert store.counts() == {"gen_for:done": 500}
    store.close()


def test_a_record_reads_back_whole_and_the_latest_outcome_wins(tmp_path):
    run_dir = tmp_path / "run"
    store = Store.open(run_dir)
    cited = [{"url": "https://example.invalid/a", "title": "A"}]
    store.write_batch([_failed("k1", 7, "gen_for", "timed out after 600s")])
    store.write_batch(
        [
            _done(
                "k1",
                pair_id=7,
                content="answer",
                reasoning="thoughts",
                finish_reason="stop",
                usage={"prompt_tokens": 3, "completion_tokens": 4},
                attempts=2,
                latency_s=1.5,
                citations=cited,
            )
        ]
    )
    store.close()

    again = Store.open(run_dir, create=False, lock=False)  # as `status` or --reuse opens it
    try:
        assert again.has_calls()
        [rec] = again.calls_for_pair(7).values()
        assert (rec.status, rec.content, rec.reasoning, rec.finish_reason) == (
            "done",
            "answer",
            "thoughts",
            "stop",
        )
        assert rec.usage == {"prompt_tokens": 3, "completion_tokens": 4}
        assert (rec.attempts, rec.latency_s, rec.citations) == (2, 1.5, cited)
        assert rec.error_class is None and rec.http_status is None  # the failure is replaced
        assert again.get_call("k1") == rec and again.get_call("nope") is None
        assert again.calls_for_pair(8) == {}
    finally:
        again.close()


def test_calls_left_started_are_counted_once_as_possibly_paid_twice(tmp_path):
    run_dir = tmp_path / "run"
    store = Store.open(run_dir)
    store.write_batch([], intents=[Intent(f"k{i}", i, "gen_for", f"s{i}") for i in range(3)])
    store.write_batch([_done("k0", pair_id=0)])  # one of them answered before the kill
    assert store.settle_interrupted() == 2
    assert store.settle_interrupted() == 0  # counted once, however often it is opened
    assert store.counts() == {"gen_for:done": 1, "gen_for:interrupted": 2}
    store.write_batch([], intents=[Intent("k9", 9, "judge_forward", "s9")])  # the next kill
    assert store.settle_interrupted() == 1
    assert store.possibly_duplicated() == 3
    store.close()


def test_progress_and_failures_as_status_reports_them(tmp_path):
    store = Store.open(tmp_path / "run")
    store.write_batch(
        [
            _done("a1", 1, "gen_for"),
            _done("a2", 1, "gen_against"),
            _done("a3", 1, "judge_forward"),
            _done("b1", 2, "gen_for"),
            _failed("b2", 2, "gen_against", "prompt has 9120 input tokens", 400),
            _failed("c1", 3, "gen_for", "prompt has 9388 input tokens", 400),
            _failed("c2", 3, "gen_against", "upstream timed out"),
        ]
    )
    final = frozenset({"invalid_request"})
    gen_judge, finished = store.progress_so_far(1, final)
    assert gen_judge == {"gen": 6, "judge": 1} and finished == 1  # pair 1 has its verdict
    assert store.pair_counts() == {"judged": 1, "failed": 2}
    groups = store.failure_groups()
    # Messages that differ only in their numbers are one group; the first is the example.
    assert [(g.count, g.http_status, g.example_pair_id) for g in groups] == [
        (2, 400, 2),
        (1, 503, 3),
    ]
    assert groups[0].message == "prompt has 9120 input tokens"
    assert groups[0].line().startswith("2 x generation transient (HTTP 400)")
    store.close()


def test_one_writer_per_run_directory_readers_welcome(tmp_path):
    run_dir = tmp_path / "run"
    first = Store.open(run_dir)
    try:
        with pytest.raises(StoreError, match="in use by another evaluator"):
            Store.open(run_dir)
        assert first.holder() == os.getpid()
        reader = Store.open(run_dir, create=False, lock=False)
        assert not reader.writable
        reader.close()
    finally:
        first.close()
    with Store.open(run_dir, create=False) as second:  # released: the next writer may open it
        assert second.writable and second.holder() == os.getpid()


def test_what_is_not_a_checkpoint_is_refused_by_name(tmp_path):
    with pytest.raises(StoreError, match="no run in .*the directory does not exist"):
        Store.open(tmp_path / "missing", create=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CheckpointCorrupt, match="not an SQLite file"):
        Store.open(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / DB_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="is empty"):
        Store.open(empty, create=False, lock=False)
