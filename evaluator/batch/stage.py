"""A stage whose calls go through a provider's Batch API (batch mode), as a ChatClient.

The scheduler calls `chat()` exactly as it does for an online pool; here the
call waits in an open batch, the batch is submitted, polled, and its result file
resolves each waiting call. To the scheduler a batch answer is an ordinary
Completion or CallFailure. When the open batch is submitted: evaluator.batch.open_batch.
Several batches may be at the provider at once; `capacity` calls in all, which is also
how many of the stage's calls the scheduler keeps in flight.

Never twice. Before anything is sent, the batch's row and its (custom_id, call
key) pairs are committed to the store (state "submitting"). After the provider
accepts it, its id is recorded ("submitted"). Each custom_id is the call key
plus the batch's marker, and the marker is also put in the batch's metadata
where the provider has metadata (OpenAI). At start-up (`start()`), every batch
with requests whose call has no outcome yet is re-attached: polled and read,
never resubmitted. A batch still "submitting" (the evaluator died between create
and record) is looked up at the provider by its marker; only if it is not there
are its requests free to be sent again.

Failures. A request that failed inside a batch (an error line, or a batch that
expired or was cancelled before running it) becomes the CallFailure an online
call would have returned. Retryable ones (rate limit, transient, expired,
cancelled) go into a later batch, up to the run's `max_attempts` and within its
retry budget; final ones (invalid request, context length, content filter) are
recorded as such; a fatal one (key, quota) stops the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from evaluator.batch.open_batch import OpenBatch
from evaluator.batch.settings import BatchSettings, BatchStats
from evaluator.store import BatchRow, Store, StoreError, StoreWriter
from workers.base import (
    CallFailure,
    Completion,
    ErrorClass,
    FatalEndpointError,
    RetryWaitTooLong,
    cancel_and_wait,
)
from workers.batch import CUSTOM_ID, BatchAPI, BatchError, BatchRef
from workers.client import EndpointUnreachable

log = logging.getLogger("evaluator")

__all__ = ["BatchSettings", "BatchStage"]


class BatchStage:
    """A ChatClient for one stage in batch mode (see the module docstring)."""

    # Calls go out in batches, not one request each: the caller counts a call as sent when
    # it hands it over (no intent is recorded per call; the batch's row is the record).
    batched = True

    def __init__(self, api: BatchAPI, stage: str, store: Store, settings: BatchSettings) -> None:
        self.api = api
        self.stage = stage
        self.store = store
        self.settings = settings
        self.name = api.name
        self.endpoints: list[Any] = []  # no online endpoints: nothing for pool metrics
        self.stats = BatchStats()
        self._writer: StoreWriter | None = None
        self._current: dict[str, str] = {}  # call key -> custom_id in the newest batch holding it
        self._waiting: dict[str, asyncio.Future] = {}
        self._ready: dict[str, Completion | CallFailure] = {}  # results nobody waits for yet
        self._open = OpenBatch(settings, lambda items: self._spawn(self._submit(items)))
        self._tasks: set[asyncio.Task] = set()
        self._flusher: asyncio.Task | None = None
        self._waited_too_long: RetryWaitTooLong | None = None  # a stop that is exit 9

    @property
    def capacity(self) -> int:
        return self.settings.capacity

    # -- lifetime ---------------------------------------------------------------------
    async def __aenter__(self) -> BatchStage:
        await self.api.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        await self.api.__aexit__(*exc)

    async def close(self) -> None:
        """Stop submitting and polling. Whatever is at the provider stays recorded for --resume."""
        await cancel_and_wait(self._flusher)
        self._flusher = None
        for task in list(self._tasks):
            await cancel_and_wait(task)
        self._tasks.clear()

    async def check(self) -> None:
        await self.api.check()

    async def start(self, writer: StoreWriter) -> None:
        """Re-attach to this stage's batches from earlier sessions, then start batching.

        The store is read before this returns, so no call of a re-attached batch can be
        put in a new batch by a `chat()` that comes after.
        """
        self._writer = writer
        known = {r.provider_batch_id for r in self.store.open_batches() if r.provider_batch_id}
        for row in self.store.open_batches(self.stage):
            unsettled = self.store.batch_unsettled(row.id)
            if not unsettled:  # every request of it has its outcome recorded
                await writer.run(lambda s, b=row.id: s.batch_update(b, "settled"))
                continue
            pairs = dict(unsettled)
            for cid, key in unsettled:
                self._current[key] = cid  # newer batches (higher ids) win
            self.stats.reattached += 1
            log.info(
                "%s: re-attaching to %s batch %s (%d requests without a result yet)",
                self.name,
                row.provider,
                row.provider_batch_id or f"being created (marker {row.marker})",
                len(pairs),
            )
            self._spawn(self._reattach(row, pairs, known))
        self._flusher = asyncio.create_task(self._open.run(), name=f"{self.stage}-batcher")

    # -- the ChatClient call ----------------------------------------------------------
    async def chat(
        self,
        body: bytes,
        max_tokens: int = 0,
        before_send: Callable[[], Awaitable[None]] | None = None,
        key: str | None = None,
    ) -> Completion | CallFailure:
        """One call through the batch API. `before_send` is not used: the batch's row in
        the store is this call's record of having been sent (and is re-attached on resume,
        not counted as possibly paid twice)."""
        if key is None:
            key = hashlib.sha256(body).hexdigest()[:32]
        start = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            result = self._ready.pop(key, None)
            if result is None:
                fut = asyncio.get_running_loop().create_future()
                self._waiting[key] = fut
                if key not in self._current:
                    self._open.add(key, body)
                try:
                    result = await fut
                finally:
                    if self._waiting.get(key) is fut:
                        del self._waiting[key]
            if isinstance(result, Completion):
                result.attempts = attempts
                result.latency_s = time.monotonic() - start
                return result
            result.attempts = attempts
            if result.error_class is ErrorClass.FATAL:
                raise self._waited_too_long or FatalEndpointError(self.name, result)
            if not result.error_class.retryable or attempts >= self.settings.max_attempts:
                break
            budget = self.settings.budget
            if budget is not None and not budget.take():
                result.message += " (the run's retry budget is spent)"
                break
            self.stats.resubmitted += 1  # into a later batch
        result.latency_s = time.monotonic() - start
        return result

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("%s: batch task failed: %r", self.name, exc)
            # A bug: nobody may wait forever, and the run must stop (resume re-attaches).
            for key in list(self._waiting):
                self._fail_waiter(key, exc)

    # -- submitting ---------------------------------------------------------------------
    async def _submit(self, items: list[tuple[str, bytes]]) -> None:
        marker = secrets.token_hex(6)
        pairs = {f"{key}-{marker}": key for key, _ in items}
        lines = [self.api.line(f"{key}-{marker}", body) for key, body in items]
        del items
        bad = next((cid for cid in pairs if not CUSTOM_ID.match(cid)), None)
        if bad is not None:  # keys are 32 hex characters: only a bug gets here
            raise ValueError(f"custom_id {bad!r} does not fit the providers' rules")
        assert self._writer is not None, "start() the batch stage before chatting"
        requests = list(pairs.items())
        try:
            row = await self._writer.run(
                lambda s: s.batch_submitting(marker, self.api.provider, self.stage, requests)
            )
        except StoreError as exc:
            for key in pairs.values():
                self._fail_waiter(key, exc)
            return
        for cid, key in pairs.items():
            self._current[key] = cid
        since = time.time()
        try:
            ref = await self.api.create(lines, marker)
        except FatalEndpointError as exc:
            self._note_stop(exc)
            await self._void(row, pairs, exc.failure)
            return
        except BatchError as exc:
            # The provider refused the batch as a whole (its size, its model, its format):
            # the requests are not at fault, so none is recorded as failed; the run stops.
            await self._void(row, pairs, _refused(exc.failure))
            return
        except EndpointUnreachable as exc:
            # The create may have reached the provider: look before giving the calls back.
            found = await self._find(marker, since, len(lines), set())
            if found is None:
                del lines
                await self._void(row, pairs, CallFailure(ErrorClass.TRANSIENT, str(exc)))
                return
            ref = found
        del lines
        self.stats.submitted += 1
        self.stats.requests += len(pairs)
        self.stats.ids.append(ref.id)
        log.info("%s: submitted batch %s (%d requests)", self.name, ref.id, len(pairs))
        await self._writer.run(
            lambda s: s.batch_update(row, "submitted", ref.id, ref.input_file_id)
        )
        await self._watch(row, ref.id, pairs)

    async def _find(self, marker: str, since: float, n: int, exclude: set[str]) -> BatchRef | None:
        while True:
            try:
                return await self.api.find(marker, since, n, exclude)
            except EndpointUnreachable as exc:
                log.warning("%s: cannot list batches yet (%s); trying again", self.name, exc)
                await asyncio.sleep(self.settings.poll_s)

    async def _reattach(self, row: BatchRow, pairs: dict[str, str], known: set[str]) -> None:
        batch_id = row.provider_batch_id
        if batch_id is None:  # died between create and record
            ref = await self._find(row.marker, row.created_at, row.n_requests, known)
            if ref is None:
                log.info(
                    "%s: batch with marker %s was never created; its requests are sent anew",
                    self.name,
                    row.marker,
                )
                await self._void(
                    row.id,
                    pairs,
                    CallFailure(ErrorClass.TRANSIENT, "its batch was never created"),
                )
                return
            batch_id = ref.id
            known.add(batch_id)
            assert self._writer is not None
            await self._writer.run(
                lambda s: s.batch_update(row.id, "submitted", ref.id, ref.input_file_id)
            )
        await self._watch(row.id, batch_id, pairs)

    def _note_stop(self, exc: FatalEndpointError) -> None:
        """A wait too long (exit 9) is told apart from a refused key (exit 3) when the calls
        it reached stop the run."""
        if isinstance(exc, RetryWaitTooLong):
            self._waited_too_long = exc

    async def _void(self, row: int, pairs: dict[str, str], failure: CallFailure) -> None:
        """The batch does not exist at the provider: its calls get `failure` (retried if it
        is retryable)."""
        assert self._writer is not None
        await self._writer.run(lambda s: s.batch_update(row, "void", note=failure.message))
        for cid, key in pairs.items():
            self._give(key, cid, CallFailure(failure.error_class, failure.message, failure.status))

    # -- polling and results ------------------------------------------------------------
    async def _watch(self, row: int, batch_id: str, pairs: dict[str, str]) -> None:
        self.stats.pending += 1
        try:
            results, failure, state = await self._wait_for_results(batch_id)
        finally:
            self.stats.pending -= 1
        given: set[str] = set()
        for cid, result in results:
            key = pairs.get(cid)
            if key is None:  # not ours (a provisionally adopted batch) or already settled
                continue
            if isinstance(result, CallFailure):
                self.stats.failed_lines += 1
            self._give(key, cid, result)
            given.add(cid)
        missing = failure or CallFailure(
            ErrorClass.TRANSIENT, f"batch {batch_id} returned no result for this request"
        )
        for cid, key in pairs.items():
            if cid not in given:
                self._give(key, cid, CallFailure(missing.error_class, missing.message))
        if state is not None:
            assert self._writer is not None
            await self._writer.run(lambda s: s.batch_update(row, state))

    async def _wait_for_results(
        self, batch_id: str
    ) -> tuple[list[tuple[str, Completion | CallFailure]], CallFailure | None, str | None]:
        """(results, a failure for every request, the row's new state or None to keep it)."""
        while True:
            try:
                status = await self.api.status(batch_id)
                if not status.ended:
                    await asyncio.sleep(self.settings.poll_s)
                    continue
                if status.failure is not None:
                    return [], status.failure, "ended"
                log.info("%s: batch %s ended (%s)", self.name, batch_id, status.status)
                return await self.api.results(status), None, "ended"
            except EndpointUnreachable as exc:
                log.warning("%s: batch %s: %s; polling again", self.name, batch_id, exc)
                await asyncio.sleep(self.settings.poll_s)
            except BatchError as exc:  # the provider no longer knows the batch: calls are free
                return [], exc.failure, "void"
            except FatalEndpointError as exc:  # the key: stop; the batch stays for --resume
                self._note_stop(exc)
                return [], exc.failure, None

    def _give(self, key: str, cid: str, result: Completion | CallFailure) -> None:
        """Hand a result to its call, unless a newer batch holds that call."""
        if self._current.get(key) != cid:
            return
        del self._current[key]
        fut = self._waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_result(result)
        else:
            self._ready[key] = result

    def _fail_waiter(self, key: str, exc: BaseException) -> None:
        fut = self._waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def summary(self) -> dict[str, Any]:
        """What this session did with the provider's Batch API (for summary.json)."""
        return {
            "provider": self.api.provider,
            "batches_submitted": self.stats.submitted,
            "batches_reattached": self.stats.reattached,
            "requests_submitted": self.stats.requests,
            "failed_in_batch": self.stats.failed_lines,
            "resubmitted_after_failure": self.stats.resubmitted,
            "batch_ids": self.stats.ids[-20:],
        }


def _refused(failure: CallFailure) -> CallFailure:
    return CallFailure(
        ErrorClass.FATAL, f"the provider refused the batch: {failure.message}", failure.status
    )
