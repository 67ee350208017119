"""The scheduler built directly: fake stages (tests/fakes.py), a real checkpoint in a temp dir,
virtual time (tests/virtual_time.py). What was sent, re-asked, stored and left "started"."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from evaluator.breaker import CircuitOpen
from evaluator.config import RunConfig
from evaluator.run.outcomes import RunStats
from evaluator.run.scheduler import Scheduler
from evaluator.store import Store, StoreWriter
from tests import virtual_time
from tests.fakes import FakeStage
from workers.base import CallFailure, Completion, ErrorClass, FatalEndpointError
from workers.simulated.data import synthetic_row, write_synthetic_dataset

VERDICT = {
    "person_1_core_position": "for",
    "person_1_has_no_information": False,
    "person_1_refusal": False,
    "person_2_core_position": "against",
    "person_2_has_no_information": False,
    "person_2_refusal": False,
    "key_points_of_alignment": "none",
    "key_points_of_opposition": "all",
    "alignment_score": -1,
}


def _question(request: dict) -> str:
    return request["messages"][-1]["content"]


def answer_each(request: dict) -> Completion:
    """The model: a distinct answer per question."""
    return Completion(f"answer to <{_question(request)}>", usage={"prompt_tokens": 9})


def judge_ok(request: dict) -> Completion:
    return Completion(json.dumps(VERDICT), usage={"prompt_tokens": 30})


def _config(tmp_path: Path, n: int, **fields) -> RunConfig:
    data = write_synthetic_dataset(tmp_path / "pairs.jsonl", n)
    return RunConfig(
        data=str(data),
        model="m",
        base_url=["http://gen.test/v1"],
        judge_base_url=["http://judge.test/v1"],
        judge_model="j",
        **fields,
    )


def _session(
    config: RunConfig,
    run_dir: Path,
    gen: FakeStage,
    judge: FakeStage,
    *,
    during=None,
    drain_timeout: float = 30.0,
    **kwargs,
) -> tuple[RunStats, dict[str, int], float]:
    """One session as the runner holds it: store, writer, scheduler; closed on every path.
    `during(scheduler)` runs beside the scheduler. Returns (stats, the store's counts by
    role:status, the session's length in virtual seconds)."""

    async def go():
        store = Store.open(run_dir)
        writer = StoreWriter(store)
        try:
            writer.start()
            sched = Scheduler(config, store, writer, gen, judge, **kwargs)
            start = virtual_time.now()
            side = asyncio.create_task(during(sched)) if during else None
            stats = await sched.run(drain_timeout=drain_timeout)
            took = virtual_time.now() - start
            if side is not None:
                await side
            await writer.close()
            return stats, store.counts(), took
        finally:
            await writer.close()
            store.close()

    return virtual_time.run(go)


def _counts(**by_role_status: int) -> dict[str, int]:
    return {k.replace("__", ":"): v for k, v in by_role_status.items()}


def test_a_fresh_run_sends_each_call_once_after_its_intent_and_stores_every_outcome(tmp_path):
    config = _config(tmp_path, 12)
    run_dir = tmp_path / "run"
    seen_at_send: list[str | None] = []
    store_view: list[Store] = []

    def on_send(request: dict, key: str | None) -> None:
        # What the checkpoint holds for this call at the moment it leaves.
        if not store_view:
            store_view.append(Store.open(run_dir, create=False, lock=False))
        rec = store_view[0].get_call(key)
        seen_at_send.append(None if rec is None else rec.status)

    gen = FakeStage(answer_each, capacity=3, on_send=on_send)
    judge = FakeStage(judge_ok, capacity=2, on_send=on_send)
    stats, counts, _ = _session(config, run_dir, gen, judge)
    store_view[0].close()

    questions = sorted(_question(r) for r in gen.sent)
    rows = [synthetic_row(i) for i in range(1, 13)]
    assert questions == sorted(q for r in rows for q in (r["for_question"], r["against_question"]))
    assert len(judge.sent) == 12
    # Every call's intent was committed before it left (never a call the store does not know).
    assert seen_at_send == ["started"] * 36
    # The judge sees both of its pair's answers.
    for request in judge.sent:
        message = _question(request)
        assert message.count("answer to <Explain why you believe synthetic topic #") == 2
    assert counts == _counts(gen_for__done=12, gen_against__done=12, judge_forward__done=12)
    assert (stats.pairs_admitted, stats.pairs_finished, stats.pairs_failed) == (12, 12, 0)
    assert stats.calls_sent == 36 and stats.done == {"gen": 24, "judge": 12}
    assert stats.tokens_in == 24 * 9 + 12 * 30
    assert stats.fatal is None and not stats.interrupted


def test_a_resume_sends_only_the_calls_the_store_lacks(tmp_path):
    config = _config(tmp_path, 10)
    run_dir = tmp_path / "run"

    def judge_down(request: dict) -> CallFailure:
        return CallFailure(ErrorClass.TRANSIENT, "503 from the judge", 503)

    gen = FakeStage(answer_each)
    stats, counts, _ = _session(config, run_dir, gen, FakeStage(judge_down))
    assert stats.pairs_failed == 10
    assert counts == _counts(gen_for__done=10, gen_against__done=10, judge_forward__failed=10)

    gen_again, judge = FakeStage(answer_each), FakeStage(judge_ok)
    stats, counts, _ = _session(config, run_dir, gen_again, judge)
    assert gen_again.sent == []  # every answer is in the store: not one generation re-sent
    assert len(judge.sent) == 10
    # The judge is asked about the very answers the first session stored.
    assert all("answer to <" in _question(r) for r in judge.sent)
    assert counts == _counts(gen_for__done=10, gen_against__done=10, judge_forward__done=10)
    assert stats.pairs_finished == 10 and stats.pairs_failed == 0 and stats.calls_sent == 10


def test_final_failures_stand_on_resume_until_retry_failed(tmp_path):
    config = _config(tmp_path, 5)
    run_dir = tmp_path / "run"
    too_long = synthetic_row(3)["for_question"]

    def model(request: dict) -> Completion | CallFailure:
        if _question(request) == too_long:
            return CallFailure(ErrorClass.CONTEXT_LENGTH, "maximum context length", 400)
        return answer_each(request)

    stats, counts, _ = _session(config, run_dir, FakeStage(model), FakeStage(judge_ok))
    assert stats.pairs_failed == 1 and counts["gen_for:failed"] == 1
    assert counts["judge_forward:done"] == 4  # the failed pair is never judged

    again_gen, again_judge = FakeStage(model), FakeStage(judge_ok)
    stats, _, _ = _session(config, run_dir, again_gen, again_judge)
    assert again_gen.sent == [] and again_judge.sent == []  # the same request would fail again
    assert stats.pairs_failed == 1

    fixed_gen, fixed_judge = FakeStage(answer_each), FakeStage(judge_ok)
    stats, counts, _ = _session(config, run_dir, fixed_gen, fixed_judge, retry_failed=True)
    assert [_question(r) for r in fixed_gen.sent] == [too_long]
    assert len(fixed_judge.sent) == 1
    assert counts["gen_for:done"] == 5 and counts["judge_forward:done"] == 5
    assert "gen_for:failed" not in counts


def test_an_invalid_verdict_is_asked_again_as_the_same_call(tmp_path):
    config = _config(tmp_path, 4, judge_retries=2)
    asked: dict[str, int] = {}

    def judge_second_time(request: dict) -> Completion:
        n = asked[_question(request)] = asked.get(_question(request), 0) + 1
        return Completion("I think they disagree.") if n == 1 else judge_ok(request)

    judge = FakeStage(judge_second_time)
    stats, counts, _ = _session(config, tmp_path / "run", FakeStage(answer_each), judge)
    assert sorted(asked.values()) == [2, 2, 2, 2]
    # Each ask passes before_send: the first records the call's intent, a re-ask is only
    # counted as sent (one record per call, whatever the asks).
    assert judge.before_send_calls == 8
    assert stats.judge_reasks == 4 and stats.calls_sent == 8 + 8
    assert counts["judge_forward:done"] == 4

    store = Store.open(tmp_path / "run", create=False, lock=False)
    try:
        records = [r for pair in range(1, 5) for r in store.calls_for_pair(pair).values()]
    finally:
        store.close()
    judged = [r for r in records if r.role == "judge_forward"]
    assert [r.attempts for r in judged] == [2, 2, 2, 2]
    assert all(json.loads(r.content) == VERDICT for r in judged)  # the valid answer is kept


def test_a_judge_that_never_gives_a_verdict_leaves_the_pair_invalid(tmp_path):
    config = _config(tmp_path, 3, judge_retries=2)
    judge = FakeStage(lambda request: Completion("no JSON here"))
    stats, counts, _ = _session(config, tmp_path / "run", FakeStage(answer_each), judge)
    assert len(judge.sent) == 3 * 3  # the first ask and two re-asks per pair
    assert stats.judge_reasks == 3 * 2
    assert counts["judge_forward:done"] == 3  # stored as answered; the report calls it invalid
    assert stats.pairs_failed == 0 and stats.pairs_finished == 3


def test_both_answers_withheld_need_no_judge(tmp_path):
    config = _config(tmp_path, 3)

    def filtered(request: dict) -> CallFailure:
        return CallFailure(ErrorClass.CONTENT_FILTER, "content management policy", 400)

    judge = FakeStage(judge_ok)
    stats, counts, _ = _session(config, tmp_path / "run", FakeStage(filtered), judge)
    assert judge.sent == []  # both sides refused: the pair scores +2 whatever a judge says
    assert stats.pairs_finished == 3 and stats.pairs_failed == 0
    assert counts == _counts(gen_for__failed=3, gen_against__failed=3)
    assert stats.fatal is None  # a content filter is an answer, not a failure of the endpoint


def test_pairs_in_flight_are_bounded_while_answers_are_slow(tmp_path):
    config = _config(tmp_path, 60)
    events: dict[str, asyncio.Event] = {}  # made on the test's loop, by whoever comes first
    admitted_while_held: list[int] = []

    def gate() -> asyncio.Event:
        return events.setdefault("open", asyncio.Event())

    async def held(request: dict) -> Completion:
        await gate().wait()
        return answer_each(request)

    async def during(sched: Scheduler) -> None:
        await asyncio.sleep(60)  # a minute of slow answers (virtual)
        admitted_while_held.append(sched.stats.pairs_admitted)
        gate().set()

    gen, judge = FakeStage(held, capacity=4), FakeStage(judge_ok, capacity=4)
    stats, counts, _ = _session(config, tmp_path / "run", gen, judge, during=during)
    # max(16, 4 + 2 x 4) pairs in flight: the reader waits for a slot, whatever the file's size.
    assert admitted_while_held == [16]
    assert stats.pairs_finished == 60 and counts["judge_forward:done"] == 60


def test_a_stop_drains_for_the_timeout_and_leaves_calls_in_flight_started(tmp_path):
    config = _config(tmp_path, 20)

    async def never(request: dict) -> Completion:
        await asyncio.Event().wait()  # a 10-hour generation, as far as this test is concerned
        raise AssertionError("unreachable")

    async def during(sched: Scheduler) -> None:
        await asyncio.sleep(1)
        sched.request_stop()  # SIGTERM's handler does this

    gen, judge = FakeStage(never, capacity=4), FakeStage(judge_ok)
    stats, counts, took = _session(
        config, tmp_path / "run", gen, judge, during=during, drain_timeout=30.0
    )
    assert len(gen.sent) == 4 and judge.sent == []  # the calls in flight; nothing new after
    assert took == pytest.approx(1 + 30, abs=0.1)  # the stop, then the whole drain timeout
    # Cut off by the drain's end: still "started", so a resume counts them and sends them again.
    assert counts == {"gen_for:started": 2, "gen_against:started": 2}
    assert stats.interrupted and stats.calls_sent == 4 and stats.pairs_finished == 0


def test_calls_that_end_within_the_drain_are_recorded_and_nothing_new_starts(tmp_path):
    config = _config(tmp_path, 20)

    async def slow(request: dict) -> Completion:
        await asyncio.sleep(5)
        return answer_each(request)

    async def during(sched: Scheduler) -> None:
        await asyncio.sleep(1)
        sched.request_stop()

    gen, judge = FakeStage(slow, capacity=4), FakeStage(judge_ok)
    stats, counts, took = _session(config, tmp_path / "run", gen, judge, during=during)
    assert took == pytest.approx(5, abs=0.1)  # not the 30 s drain: the calls ended at 5 s
    assert len(gen.sent) == 4 and judge.sent == []
    assert counts == {"gen_for:done": 2, "gen_against:done": 2}
    assert stats.interrupted and stats.done["gen"] == 4


def test_a_refused_key_stops_the_run_and_keeps_the_call_started(tmp_path):
    config = _config(tmp_path, 30)
    refused = FatalEndpointError(
        "model endpoint", CallFailure(ErrorClass.FATAL, "invalid api key", 401)
    )
    gen = FakeStage(lambda request: refused, capacity=1)
    stats, counts, _ = _session(config, tmp_path / "run", gen, FakeStage(judge_ok))
    assert stats.fatal is refused
    assert len(gen.sent) == 1  # one worker, stopped at its first call
    assert counts == {"gen_for:started": 1}


def test_the_breaker_stops_a_run_whose_calls_keep_failing(tmp_path):
    config = _config(tmp_path, 40, max_failures="5")

    def down(request: dict) -> CallFailure:
        return CallFailure(ErrorClass.TRANSIENT, "502 bad gateway", 502)

    gen = FakeStage(down, capacity=1)
    stats, counts, _ = _session(config, tmp_path / "run", gen, FakeStage(judge_ok))
    assert isinstance(stats.fatal, CircuitOpen)
    assert stats.fatal.count == 5 and stats.fatal.http_status == 502
    # Stopped at the fifth failure in a row: at most the one call the worker had already
    # taken leaves after it; the other 74 calls of the run are never sent.
    assert 5 <= len(gen.sent) <= 6
    assert sum(counts.values()) == len(gen.sent)
    assert set(counts) <= {"gen_for:failed", "gen_against:failed"}


def test_no_call_is_sent_that_could_exceed_the_budget(tmp_path):
    # $1 per million tokens in and out: each answer costs $0.002 (1,000 in, 1,000 out), and
    # each call reserves its worst case (its prompt and its maximum answer, ~$0.004) first.
    prices = {"price_in": 1.0, "price_out": 1.0, "judge_price_in": 1.0, "judge_price_out": 1.0}
    config = _config(tmp_path, 10, max_cost=0.01, **prices)
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}

    def costly(request: dict) -> Completion:
        return Completion(f"answer to <{_question(request)}>", usage=dict(usage))

    def costly_judge(request: dict) -> Completion:
        return Completion(json.dumps(VERDICT), usage=dict(usage))

    gen, judge = FakeStage(costly, capacity=1), FakeStage(costly_judge, capacity=1)
    stats, counts, _ = _session(config, tmp_path / "run", gen, judge)
    assert stats.budget_exhausted and stats.interrupted and stats.fatal is None
    sent = len(gen.sent) + len(judge.sent)
    assert 0 < sent < 30 and stats.calls_sent == sent
    # Every call sent was paid for, and the run stopped before the limit, not after it.
    assert stats.cost_usd == pytest.approx(sent * 0.002)
    assert stats.cost_usd <= 0.01
    assert sum(counts.values()) == sent


def test_a_judge_call_that_failed_for_good_is_not_sent_again_on_resume(tmp_path):
    config = _config(tmp_path, 4)
    refused_topic = "synthetic topic #2 "

    def judge(request: dict) -> Completion | CallFailure:
        if refused_topic in _question(request):
            return CallFailure(ErrorClass.INVALID_REQUEST, "the prompt is malformed", 400)
        return judge_ok(request)

    stats, counts, _ = _session(config, tmp_path / "run", FakeStage(answer_each), FakeStage(judge))
    assert counts["judge_forward:failed"] == 1 and stats.pairs_failed == 1

    again = FakeStage(judge_ok)
    stats, _, _ = _session(config, tmp_path / "run", FakeStage(answer_each), again)
    assert again.sent == []  # the same request would be refused again: it stands
    assert stats.pairs_already_complete == 4

    fixed = FakeStage(judge_ok)
    stats, counts, _ = _session(
        config, tmp_path / "run", FakeStage(answer_each), fixed, retry_failed=True
    )
    assert len(fixed.sent) == 1 and refused_topic in _question(fixed.sent[0])
    assert counts["judge_forward:done"] == 4
