"""What a run's calls and pairs came to: the session's tallies (RunStats), a call's stored
record (call_record), one pair's state while in flight (PairState), and which recorded
failures stand on resume (FINAL_FAILURES)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from evaluator import pair_answers
from evaluator.calls import CallSpec
from evaluator.dataset import Pair
from evaluator.store import CallRecord
from workers.base import CallFailure, Completion, ErrorClass

# A failure of these classes will fail again with the same request: keep it on resume.
FINAL_FAILURES = frozenset(
    {
        ErrorClass.INVALID_REQUEST.value,
        ErrorClass.CONTEXT_LENGTH.value,
        ErrorClass.CONTENT_FILTER.value,
        # The same request gets the same oversized answer: kept until --retry-failed
        # (with a larger --max-response-mb, if the answer is wanted after all).
        ErrorClass.RESPONSE_TOO_LARGE.value,
    }
)


@dataclass
class RunStats:
    pairs_admitted: int = 0
    pairs_already_complete: int = 0
    pairs_finished: int = 0
    pairs_failed: int = 0
    calls_reused: int = 0
    calls_sent: int = 0
    calls_failed: int = 0
    judge_reasks: int = 0
    bad_rows: int = 0
    # Per stage ("gen", "judge"): calls answered and failed, tokens in and out, estimated cost.
    done: dict[str, int] = field(default_factory=lambda: {"gen": 0, "judge": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"gen": 0, "judge": 0})
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0  # this session's estimated cost (the run's total: Scheduler.cost)
    cost: dict[str, float] = field(default_factory=lambda: {"gen": 0.0, "judge": 0.0})
    budget_exhausted: bool = False  # stopped before a call that could exceed --max-cost
    interrupted: bool = False
    fatal: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    # Process CPU (all threads: the loop and the store writer) at the start of the session.
    started_cpu: float = field(default_factory=time.process_time)

    def count_call(self, stage: str, result: Completion | CallFailure) -> None:
        """One call's outcome: answered (with its tokens) or failed."""
        if not isinstance(result, Completion):
            self.calls_failed += 1
            self.failed[stage] += 1
            return
        tin = result.usage.get("prompt_tokens") or 0
        tout = result.usage.get("completion_tokens") or 0
        if isinstance(tin, int) and isinstance(tout, int):
            self.tokens_in += tin
            self.tokens_out += tout
        self.done[stage] += 1

    def add_cost(self, stage: str, usd: float) -> None:
        self.cost_usd += usd
        self.cost[stage] += usd


class PairState:
    __slots__ = ("pair", "answers", "records", "pending", "failed", "invalid", "refused")

    def __init__(self, pair: Pair, records: dict[str, CallRecord]) -> None:
        self.pair = pair
        self.answers: dict[str, str] = {}
        self.records: dict[str, CallRecord] | None = records
        self.pending = 0
        self.failed = False
        self.invalid = False
        self.refused: dict[str, str] = {}  # side -> why the provider withheld its answer

    def take_stored(self, role: str, rec: CallRecord | None, final: bool) -> bool:
        """A generation call's record from the store or a --reuse run (`final`: a failure
        that stands). True when the call must still be sent."""
        reason = pair_answers.refusal_reason(rec)
        if reason is not None:
            assert rec is not None
            self.answers[role] = (rec.content if rec.status == "done" else "") or ""
            self.refused[role.removeprefix("gen_")] = reason
        elif rec is not None and rec.status == "done":
            self.answers[role] = rec.content or ""
        elif rec is not None and final:
            self.failed = True
        else:
            return True
        return False

    def take_answer(self, role: str, result: Completion | CallFailure) -> None:
        """A generation call's outcome as it arrives: an answer, a refusal, or a failure."""
        if isinstance(result, Completion):
            self.answers[role] = result.content
            if result.finish_reason in pair_answers.REFUSAL_FINISH_REASONS:
                self.refused[role.removeprefix("gen_")] = result.finish_reason
        elif result.error_class is ErrorClass.CONTENT_FILTER:
            # The provider would not answer this question: its answer is a refusal, not a failure.
            self.answers[role] = ""
            self.refused[role.removeprefix("gen_")] = result.error_class.value
        else:
            self.failed = True


def call_record(spec: CallSpec, result: Completion | CallFailure, **extra: object) -> CallRecord:
    """The record stored for one call's outcome (`extra` overrides fields, e.g. attempts)."""
    rec = CallRecord(
        key=spec.key,
        pair_id=spec.pair_id,
        role=spec.role,
        status="done" if isinstance(result, Completion) else "failed",
        body_sha=spec.body_sha,
        attempts=result.attempts,
        latency_s=result.latency_s,
    )
    if isinstance(result, Completion):
        rec.content, rec.reasoning = result.content, result.reasoning
        rec.citations = result.citations
        rec.finish_reason, rec.usage = result.finish_reason, result.usage
    else:
        rec.error_class, rec.error = result.error_class.value, result.message
        rec.http_status = result.status
    for name, value in extra.items():
        setattr(rec, name, value)
    return rec
