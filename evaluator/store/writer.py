"""The single writer of a run's checkpoint: group commits, intent before send."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evaluator.store.db import Store
from evaluator.store.errors import CheckpointCorrupt, StoreError, commit_in_doubt, store_error
from evaluator.store.records import CallRecord, Intent, MetaValue, PairRow
from evaluator.store.schema import COMMITS_META


@dataclass(slots=True)
class _Job:
    fn: Callable[[Store], Any]
    fut: asyncio.Future


class StoreWriter:
    """The single writer: intents and outcomes are queued and committed in batches.

    Whatever has queued up while the previous commit ran goes into the next
    one (group commit), so batches grow with load and a quiet run still commits
    at once. `intent()` returns only after its batch is committed: a request
    never leaves before the store knows it was started.

    If a commit fails (disk full, I/O error) the writer stops, fails every
    waiting intent and calls `on_error`; the store keeps its last good commit,
    and `committed` is exactly what that holds of this session's outcomes. If the
    failed commit's fsync was what failed, that commit is in doubt (`in_doubt`:
    its outcomes and intents; the intents' calls were never sent). Any other
    failure of the writer (a bug) stops the run the same way: it never hangs.
    """

    def __init__(
        self,
        store: Store,
        max_batch: int = 1024,
        on_error: Callable[[BaseException], None] | None = None,
        on_commit: Callable[[float, float], None] | None = None,
    ) -> None:
        """`on_commit(seconds, oldest_age_s)` is told each commit's duration and lag (metrics)."""
        self._store = store
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._on_error = on_error
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.committed = 0  # call outcomes committed by this writer
        self.commits = int(store.get_meta(COMMITS_META) or 0)  # the store's count, as of now
        self.in_doubt: tuple[int, int] | None = None  # (outcomes, intents) of a commit in doubt
        self.error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    def put(self, item: CallRecord | tuple[str, str] | PairRow | MetaValue) -> None:
        """Queue an outcome, a bad input row, an admitted pair or a meta value for the next
        commit."""
        if self.error is None:
            self._queue.put_nowait((time.monotonic(), item))

    async def run(self, fn: Callable[[Store], Any]) -> Any:
        """Run `fn(store)` on the writer thread, in commit order; returns once it has committed.

        For the few writes that are not call outcomes (batch bookkeeping): one writer
        thread owns the write connection, so they go through it too.
        """
        if self.error is not None:
            raise StoreError(f"the checkpoint cannot be written: {self.error}")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((time.monotonic(), _Job(fn, done)))
        return await done

    async def intent(self, intent: Intent) -> None:
        """Record that a call is about to be sent; returns once that is committed."""
        if self.error is not None:
            raise StoreError(f"the checkpoint cannot be written: {self.error}")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((time.monotonic(), (intent, done)))
        await done

    def describe(self) -> str:
        """What the checkpoint holds of this session after a failure (for the error line)."""
        text = (
            f"{self.committed} call outcome{'s' if self.committed != 1 else ''} committed in "
            f"this session, through commit #{self.commits}"
        )
        if self.in_doubt is not None:
            outcomes, intents = self.in_doubt
            text += (
                f"; commit #{self.commits + 1} ({outcomes} outcomes, {intents} intents) failed "
                "while being made durable, so it may or may not be there: its calls were not "
                "sent, and a resume that finds them counts them as possibly paid twice"
            )
        return text

    async def _run(self) -> None:
        intents: list[tuple[Intent, asyncio.Future]] = []
        jobs: list[_Job] = []
        try:
            stop = False
            while not stop:
                stamped = [await self._queue.get()]
                while len(stamped) < self._max_batch and not self._queue.empty():
                    stamped.append(self._queue.get_nowait())
                oldest: float | None = None
                records: list[CallRecord] = []
                bad: list[tuple[str, str]] = []
                pairs: list[PairRow] = []
                meta: list[MetaValue] = []
                intents, jobs = [], []
                for stamp in stamped:  # one pass: this runs for every call of the run
                    if stamp is None:
                        stop = True
                        continue
                    if oldest is None:
                        oldest = stamp[0]  # queued in order: the first is the oldest
                    item = stamp[1]
                    if isinstance(item, CallRecord):
                        records.append(item)
                    elif isinstance(item, PairRow):
                        pairs.append(item)
                    elif isinstance(item, _Job):
                        jobs.append(item)
                    elif isinstance(item, MetaValue):
                        meta.append(item)
                    elif isinstance(item[0], Intent):
                        intents.append(item)
                    else:
                        bad.append(item)
                if not (records or bad or intents or jobs or pairs or meta):
                    continue
                began = time.monotonic()
                try:
                    await asyncio.to_thread(
                        self._store.write_batch, records, bad, [i for i, _ in intents], pairs, meta
                    )
                except Exception as exc:  # noqa: BLE001 - whatever it is, the run must stop
                    if commit_in_doubt(exc):
                        self.in_doubt = (len(records), len(intents))
                    self._fail(exc, intents, jobs)
                    return
                self.commits += 1
                self.committed += len(records)
                # Committed: the calls may leave now (before the jobs, whose failure must not
                # turn a committed intent into one reported as failed).
                for _, fut in intents:
                    if not fut.done():
                        fut.set_result(None)
                intents = []
                for job in jobs:
                    try:
                        result = await asyncio.to_thread(job.fn, self._store)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(exc, [], jobs)
                        return
                    if not job.fut.done():
                        job.fut.set_result(result)
                jobs = []
                if self._on_commit is not None and oldest is not None:
                    self._on_commit(time.monotonic() - began, began - oldest)
        except BaseException as exc:
            # The loop itself failed (or was cancelled at shutdown): nobody may wait forever.
            if self.error is None:
                self._fail(exc, intents, jobs, notify=not isinstance(exc, asyncio.CancelledError))
            raise

    def _fail(
        self,
        exc: BaseException,
        intents: list[tuple[Intent, asyncio.Future]],
        jobs: list[_Job] = (),
        notify: bool = True,
    ) -> None:
        io = isinstance(exc, sqlite3.Error | OSError)
        if io:
            cause: BaseException = store_error(self._store.path, exc)
            if not isinstance(cause, CheckpointCorrupt):
                name = getattr(exc, "sqlite_errorname", None)
                detail = f"{exc} ({name})" if name else str(exc)
                cause = StoreError(f"cannot write the checkpoint {self._store.path}: {detail}")
            self.error = cause
        else:  # a bug, or a value SQLite cannot store: not the disk's fault
            cause = RuntimeError(f"the checkpoint writer failed: {exc!r}")
            self.error = StoreError(str(cause))
        futures = [fut for _, fut in intents] + [job.fut for job in jobs]
        while not self._queue.empty():  # nothing more can be saved; wake every waiter
            stamped = self._queue.get_nowait()
            item = stamped[1] if stamped is not None else None
            if isinstance(item, tuple) and isinstance(item[0], Intent):
                futures.append(item[1])
            elif isinstance(item, _Job):
                futures.append(item.fut)
        for fut in futures:
            if not fut.done():
                fut.set_exception(self.error)
        if self._on_error is not None and notify:
            self._on_error(cause)

    async def close(self) -> None:
        """Commit everything queued so far, then stop."""
        if self._task is None:
            return
        if self.error is None:
            self._queue.put_nowait(None)
        # Shielded: a Ctrl-C arriving now must not abandon queued outcomes.
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - already reported through on_error and `error`
            pass
        self._task = None
