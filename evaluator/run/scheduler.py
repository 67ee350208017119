"""The pipeline: pairs stream in, generation and judge calls fan out, outcomes go to the store.

Shape:

    reader ──admit (≤ max_pairs in flight)──► gen queue ──► N gen workers ──┐
                                                                             │ both answers in
                              store writer ◄── outcomes ◄── M judge workers ◄┘

- No task per dataset row: a fixed set of workers pulls from queues, and the
  reader admits a pair only when a slot is free, so memory is O(in flight).
- A pair's judge call is queued the moment its second answer arrives, so
  generation and judging overlap, each with its own concurrency and rate cap.
- Before admitting a pair, its completed calls are looked up in the store by
  content key; they are never sent again (resume).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from evaluator import fingerprint, pair_answers
from evaluator.breaker import BreakerRules, FailureBreaker
from evaluator.calls import CallBuilder, CallSpec
from evaluator.config import RunConfig
from evaluator.costs import CostMeter
from evaluator.dataset import BadRow, Pair
from evaluator.protocol import (
    GEN_MAX_TOKENS,
    JUDGE_MAX_TOKENS,
    VerdictError,
    parse_verdict,
    split_reasoning,
)
from evaluator.run.outcomes import PairState, RunStats, call_record
from evaluator.run.stage_client import BudgetExhausted, ChatClient
from evaluator.run.stored_calls import StoredCalls
from evaluator.sharding import run_pairs
from evaluator.store import CallRecord, Intent, Store, StoreError, StoreWriter
from workers.base import CallFailure, Completion, FatalEndpointError

if TYPE_CHECKING:
    from evaluator.metrics.registry import RunMetrics

log = logging.getLogger("evaluator")


class Scheduler:
    def __init__(
        self,
        config: RunConfig,
        store: Store,
        writer: StoreWriter,
        gen_client: ChatClient,
        judge_client: ChatClient,
        *,
        on_bad_row: Callable[[BadRow], None] | None = None,
        reuse: list[Store] | None = None,
        metrics: RunMetrics | None = None,
        cost: CostMeter | None = None,
        retry_failed: bool = False,
        stored_pairs: int | None = None,
    ) -> None:
        """`retry_failed`: send again the calls the store holds as failed with a final class
        (after the user fixed their cause); other failed calls are always sent again.
        `stored_pairs`: how many of the run's first pairs the store already holds; the
        others are stored as they are admitted (evaluator.fingerprint). None: store none
        (a run started by an older version)."""
        self.config = config
        self._stored_pairs = stored_pairs
        self.breaker = FailureBreaker(BreakerRules.parse(config.max_failures))
        self.calls = CallBuilder(config)
        self.store = store
        self.writer = writer
        self.stats = RunStats()
        self.cost = cost if cost is not None else CostMeter.for_run(config)
        self.gen_client = gen_client
        self.judge_client = judge_client
        self._batched = {
            "gen": getattr(gen_client, "batched", False),
            "judge": getattr(judge_client, "batched", False),
        }
        self._on_bad_row = on_bad_row
        self.stored = StoredCalls(store, writer, self.stats, reuse, retry_failed)
        self.metrics = metrics
        # Enough pairs in flight to keep both stages busy while some pairs wait for their judge.
        self.gen_workers = gen_client.capacity
        self.judge_workers = judge_client.capacity
        self.max_pairs = max(16, self.gen_workers + 2 * self.judge_workers)
        self._gen_q: asyncio.Queue[tuple[PairState, CallSpec] | None] = asyncio.Queue()
        self._judge_q: asyncio.Queue[tuple[PairState, CallSpec] | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.max_pairs)
        if metrics is not None:
            metrics.watch_finished(lambda: self.stats.pairs_finished)
            metrics.watch_session_cost(lambda: self.stats.cost)
            metrics.watch_queue("generation", self._gen_q.qsize)
            metrics.watch_queue("judge", self._judge_q.qsize)
        self._active = 0
        self._reader_done = False
        self._finished = asyncio.Event()
        self._stopping = False

    # -- public -------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop taking new work; calls already in flight finish and are recorded."""
        if not self._stopping:
            self._stopping = True
            self.stats.interrupted = self.stats.fatal is None
            self._finished.set()

    async def run(self, drain_timeout: float = 30.0) -> RunStats:
        workers = [
            asyncio.create_task(self._worker(self._gen_q, self._do_gen), name=f"gen-{i}")
            for i in range(self.gen_workers)
        ] + [
            asyncio.create_task(self._worker(self._judge_q, self._do_judge), name=f"judge-{i}")
            for i in range(self.judge_workers)
        ]
        reader = asyncio.create_task(self._read(), name="reader")
        try:
            await self._finished.wait()
        except asyncio.CancelledError:  # a second signal: stop now, no drain
            self.request_stop()
            drain_timeout = 0.0
        tasks = [reader]
        for task in tasks:
            task.cancel()
        for q, n in (
            (self._gen_q, self.gen_workers),
            (self._judge_q, self.judge_workers),
        ):
            while not q.empty():  # queued but never sent: nothing to record
                q.get_nowait()
            for _ in range(n):
                q.put_nowait(None)
        late: set[asyncio.Task] | list[asyncio.Task] = workers
        if drain_timeout > 0:
            try:
                _, late = await asyncio.wait(workers, timeout=drain_timeout)
            except asyncio.CancelledError:  # a second signal during the drain
                self.stats.interrupted = True
        for task in late:
            task.cancel()  # their calls stay "started": counted and re-sent on resume
        results = await asyncio.gather(*tasks, *workers, return_exceptions=True)
        for res in results:
            if isinstance(res, Exception) and self.stats.fatal is None:
                self.stats.fatal = res
        return self.stats

    # -- reader -------------------------------------------------------------
    def _bad_row(self, bad: BadRow) -> None:
        self.stats.bad_rows += 1
        self.writer.put((bad.where, bad.reason))
        if self._on_bad_row is not None:
            self._on_bad_row(bad)

    async def _read(self) -> None:
        stored = self._stored_pairs
        n = -1
        try:
            pairs = run_pairs(self.config, on_bad_row=self._bad_row)
            for n, pair in enumerate(pairs):  # noqa: B007 - n is the count after the loop
                if self._stopping:
                    return
                await self._slots.acquire()
                self._active += 1
                self.stats.pairs_admitted += 1
                if stored is not None and n >= stored:
                    # Queued before its calls' intents, so a stored call's pair is stored too.
                    self.writer.put(fingerprint.stored_row(pair, n))
                self._admit(pair)
                if n % 256 == 255:
                    await asyncio.sleep(0)  # let workers run between long stretches of reading
        except Exception as exc:
            self.fail(exc)
            return
        if stored is not None:
            self.writer.put(fingerprint.complete_marker(self.config, n + 1))
        self._reader_done = True
        if self._active == 0:
            self._finished.set()

    def _admit(self, pair: Pair) -> None:
        state = PairState(pair, self.stored.for_pair(pair.id))
        if self.config.judge_only:  # the dataset's answers: nothing to generate
            for side, answer in pair_answers.from_dataset(pair).items():
                state.answers[f"gen_{side}"] = answer["text"]
            self._plan_judges(state, from_store=True)
            return
        to_send = []
        for spec in self.calls.generation_calls(pair):
            assert state.records is not None
            rec = self.stored.known(state.records, spec.key)
            if state.take_stored(spec.role, rec, rec is not None and self.stored.final(rec)):
                to_send.append(spec)
        if state.failed:
            self._finish(state)
            return
        if not to_send:
            self._plan_judges(state, from_store=True)
            return
        state.pending = len(to_send)
        for spec in to_send:
            self._gen_q.put_nowait((state, spec))

    def _plan_judges(self, state: PairState, from_store: bool = False) -> None:
        records = state.records or {}
        state.records = None  # no longer needed: keep in-flight state small
        to_send = []
        if len(state.refused) == 2:
            # Both answers withheld by the provider: the pair scores +2 whatever a judge says,
            # so no judge call is made (evaluator.pair_answers).
            if from_store:
                self.stats.pairs_already_complete += 1
            self._finish(state)
            return
        texts = {"for": state.answers["gen_for"], "against": state.answers["gen_against"]}
        shown = pair_answers.shown_to_judge(texts, state.refused)
        for order in self.config.judge_orders:
            spec = self.calls.judge_call(state.pair, order, *shown)
            rec = self.stored.known(records, spec.key)
            if rec is not None and (rec.status == "done" or self.stored.final(rec)):
                continue
            to_send.append(spec)
        if not to_send:
            if from_store:
                self.stats.pairs_already_complete += 1
            self._finish(state)
            return
        state.pending = len(to_send)
        for spec in to_send:
            self._judge_q.put_nowait((state, spec))

    def _finish(self, state: PairState) -> None:
        if state.failed:
            self.stats.pairs_failed += 1
        if self.metrics is not None:
            outcome = "failed" if state.failed else "invalid" if state.invalid else "completed"
            self.metrics.pair_finished(outcome)
        self.stats.pairs_finished += 1
        self._active -= 1
        self._slots.release()
        if self._reader_done and self._active == 0:
            self._finished.set()

    def _budget_stop(self) -> None:
        if not self.stats.budget_exhausted:
            self.stats.budget_exhausted = True
            c = self.cost
            log.warning(
                "stopping before the budget is exceeded: spent $%.4f, $%.4f reserved by %d "
                "calls in flight, --max-cost $%g; the next call could cost more. Resume with a "
                "larger --max-cost",
                *(c.spent, c.reserved, c.in_flight, c.limit or 0.0),
            )
        self.request_stop()

    def fail(self, exc: BaseException) -> None:
        """Stop the run because of `exc` (the first cause is kept)."""
        if self.stats.fatal is None:
            self.stats.fatal = exc
        self.request_stop()

    # -- workers ------------------------------------------------------------
    async def _worker(self, queue: asyncio.Queue, handle: Callable) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            try:
                await handle(*job)
            except BudgetExhausted:
                self._budget_stop()
                return
            except (FatalEndpointError, StoreError) as exc:
                self.fail(exc)  # the call stays "started": counted and re-sent on resume
                return
            except Exception as exc:  # a bug must stop the run, not hang it
                log.exception("worker crashed")
                self.fail(exc)
                return

    def _record(
        self, spec: CallSpec, result: Completion | CallFailure, **extra: object
    ) -> CallRecord:
        self.stats.count_call("gen" if spec.role.startswith("gen") else "judge", result)
        rec = call_record(spec, result, **extra)
        self.writer.put(rec)
        return rec

    def _judge_outcome(self, stage: str, result: Completion | CallFailure) -> None:
        """Feed the circuit breaker one call's outcome; a trip stops the run (see breaker)."""
        if isinstance(result, Completion):
            self.breaker.success(stage)
            return
        tripped = self.breaker.failure(
            stage, result.error_class.value, result.status, result.message
        )
        if tripped is not None:
            self.fail(tripped)

    async def _send_intent(self, spec: CallSpec) -> None:
        await self.writer.intent(Intent(spec.key, spec.pair_id, spec.role, spec.body_sha))
        # Counted once its intent is committed, when the request is about to leave: a call
        # admitted but never sent (a stop, a budget refusal, a failed intent) is not sent.
        self.stats.calls_sent += 1

    async def _count_reask(self) -> None:
        self.stats.calls_sent += 1

    async def _do_gen(self, state: PairState, spec: CallSpec) -> None:
        max_tokens = spec.max_tokens or GEN_MAX_TOKENS
        result = await self._send("gen", spec, max_tokens, lambda: self._send_intent(spec))
        if isinstance(result, Completion):
            result.content, result.reasoning = split_reasoning(result.content, result.reasoning)
        state.take_answer(spec.role, result)
        self._record(spec, result)
        self._judge_outcome("generation", result)
        state.pending -= 1
        if state.pending == 0:
            if state.failed:
                self._finish(state)
            else:
                self._plan_judges(state)

    async def _do_judge(self, state: PairState, spec: CallSpec) -> None:
        attempts = 0
        result: Completion | CallFailure
        verdict_error = None
        for ask in range(self.config.judge_retries + 1):
            max_tokens = spec.max_tokens or JUDGE_MAX_TOKENS
            # Recorded once: a re-ask is the same call (but it is sent, so counted).
            before_send = (lambda: self._send_intent(spec)) if ask == 0 else self._count_reask
            result = await self._send("judge", spec, max_tokens, before_send)
            attempts += result.attempts
            if not isinstance(result, Completion):
                break
            result.content, result.reasoning = split_reasoning(result.content, result.reasoning)
            try:
                parse_verdict(result.content)
                verdict_error = None
                break
            except VerdictError as exc:
                verdict_error = str(exc)
                if ask < self.config.judge_retries:
                    self.stats.judge_reasks += 1
                else:
                    state.invalid = True
        if isinstance(result, CallFailure):
            state.failed = True
        self._record(spec, result, attempts=attempts)
        if verdict_error is not None:
            # A judge that never gives a valid verdict is as broken as one that errors.
            tripped = self.breaker.failure("judge", "invalid_verdict", None, verdict_error)
            if tripped is not None:
                self.fail(tripped)
        else:
            self._judge_outcome("judge", result)
        state.pending -= 1
        if state.pending == 0:
            self._finish(state)

    async def _send(
        self,
        stage: str,
        spec: CallSpec,
        max_tokens: int,
        before_send: Callable[[], Awaitable[None]],
    ) -> Completion | CallFailure:
        """One request of either stage, through the cost meter: reserved before it is sent,
        charged when it ends, on every path (a method rather than a wrapper client: this is
        the hot path). A batched stage records no intent, so its call is counted here."""
        reservation = self._reserve(stage, spec.body, max_tokens)
        if self._batched[stage]:
            self.stats.calls_sent += 1
        client = self.gen_client if stage == "gen" else self.judge_client
        result = None
        try:
            result = await client.chat(spec.body, max_tokens, before_send=before_send, key=spec.key)
        finally:
            self._settle(stage, reservation, result)
        return result

    def _reserve(self, stage: str, body: bytes, max_tokens: int) -> float:
        reservation = self.cost.reserve(stage, len(body), max_tokens)
        if reservation is None:
            raise BudgetExhausted
        return reservation

    def _settle(
        self, stage: str, reservation: float, result: Completion | CallFailure | None
    ) -> None:
        usage = result.usage if isinstance(result, Completion) else None
        self.stats.add_cost(stage, self.cost.settle(stage, reservation, usage))
