"""Unit tests of the run session's parts that need no server: the table of exit codes, the
stages built from a config, and the session's scope closing what it opened on every path."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket

import pytest

from evaluator.breaker import CircuitOpen
from evaluator.config import RunConfig
from evaluator.dataset import DatasetError
from evaluator.preflight import PreflightError
from evaluator.run import RunOptions, execute, exits
from evaluator.run.exits import Exit, UserError, exit_for, exit_for_run
from evaluator.run.outcomes import RunStats
from evaluator.run.signals import Drain, RunSignals
from evaluator.run.stage_client import NoGeneration
from evaluator.run.stages import STAGES, Limits, Stage, build_stages, role
from evaluator.store import CheckpointCorrupt, Store, StoreError, StoreIOError
from workers.base import CallFailure, ErrorClass, FatalEndpointError, RetryWaitTooLong
from workers.client import EndpointUnreachable
from workers.pool import EndpointPool
from workers.vllm_servers import ServersFailed, ServerStartError


def _fatal(cls=FatalEndpointError):
    failure = CallFailure(ErrorClass.FATAL, "401 invalid key")
    if cls is RetryWaitTooLong:
        return RetryWaitTooLong("judge endpoint", failure, 3600.0)
    return cls("judge endpoint", failure)


def test_exit_codes_are_the_documented_numbers():
    documented = {
        "OK": 0, "INTERNAL": 1, "USER": 2, "FATAL_ENDPOINT": 3, "PREFLIGHT": 4, "STORE": 5,
        "FAILED_PAIRS": 6, "BREAKER": 7, "MISCALIBRATED": 8, "RETRY_WAIT": 9,
        "INTERRUPTED": 75, "BUDGET": 76,
    }  # fmt: skip
    assert {e.name: int(e) for e in Exit} == documented
    for e in Exit:  # the table --help prints (what batch-scheduler users read) has each
        assert f"\n  {int(e):<4}" in exits.help_table(), e


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UserError("bad flag"), Exit.USER),
        (CheckpointCorrupt("damaged"), Exit.USER),
        (DatasetError("bad row"), Exit.USER),
        (StoreIOError("disk full"), Exit.STORE),
        (StoreError("cannot write"), Exit.STORE),
        (_fatal(RetryWaitTooLong), Exit.RETRY_WAIT),
        (_fatal(), Exit.FATAL_ENDPOINT),
        (ServersFailed("every server died"), Exit.FATAL_ENDPOINT),
        (CircuitOpen("judge", "10 in a row", "http_404", 404, "model not found", 10), Exit.BREAKER),
        (RuntimeError("a bug"), Exit.INTERNAL),
    ],
)
def test_an_error_has_the_same_code_before_and_after_the_first_call(error, code):
    assert exit_for(error, started=False) == code
    assert exit_for(error, started=True) == code


@pytest.mark.parametrize(
    "error",
    [EndpointUnreachable("refused"), PreflightError("no such model"), ServerStartError("died")],
)
def test_a_start_up_failure_is_exit_4_only_before_anything_was_sent(error):
    assert exit_for(error, started=False) == Exit.PREFLIGHT
    # Later the pool or batch stage handles these: one that ends the run is a bug.
    assert exit_for(error, started=True) == Exit.INTERNAL


def test_a_run_without_an_error_ends_by_its_stats():
    done = {"all_pairs_have_verdicts": True}
    assert exit_for_run(RunStats(pairs_admitted=3), done) == Exit.OK
    assert exit_for_run(RunStats(pairs_admitted=3), {"all_pairs_have_verdicts": False}) == (
        Exit.FAILED_PAIRS
    )
    assert exit_for_run(RunStats(bad_rows=4), done) == Exit.USER
    assert exit_for_run(RunStats(pairs_admitted=3, interrupted=True), done) == Exit.INTERRUPTED
    stats = RunStats(pairs_admitted=3, interrupted=True, budget_exhausted=True)
    assert exit_for_run(stats, done) == Exit.BUDGET  # the budget's stop comes first


def _config(**kw) -> RunConfig:
    return RunConfig(
        data="sample",
        model="m",
        base_url=["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"],
        judge_base_url=["http://127.0.0.1:11/v1"],
        judge_model="j",
        **kw,
    )


def test_stages_take_their_own_settings_from_the_config(tmp_path):
    config = _config(
        concurrency=3, rpm=60.0, judge_concurrency=5, judge_tpm=1000.0, judge_provider="anthropic"
    )
    with Store.open(tmp_path / "run") as store:
        gen, judge = build_stages(config, store, {"gen": "k1", "judge": None}, None, None)
    assert (gen.name, gen.label, judge.name, judge.label) == ("gen", "generation", "judge", "judge")
    assert gen.limits == Limits(3, 60.0, None)
    assert judge.limits == Limits(5, None, 1000.0)
    assert isinstance(gen.client, EndpointPool) and isinstance(judge.client, EndpointPool)
    gen_eps = [ep.client.config for ep in gen.client.endpoints]
    judge_eps = [ep.client.config for ep in judge.client.endpoints]
    assert [(c.name, c.base_url) for c in gen_eps] == [
        ("model endpoint", "http://127.0.0.1:9/v1"),
        ("model endpoint", "http://127.0.0.1:10/v1"),
    ]
    assert [(c.name, c.base_url) for c in judge_eps] == [
        ("judge endpoint", "http://127.0.0.1:11/v1")
    ]
    # Provider and model come from the stage's own settings, not from the pool's name.
    assert {(c.provider, c.model) for c in gen_eps} == {("openai", "m")}
    assert {(c.provider, c.model) for c in judge_eps} == {("anthropic", "j")}
    assert (gen_eps[0].concurrency, gen_eps[0].rpm, judge_eps[0].tpm) == (3, 60.0, 1000.0)
    assert (gen.key, judge.key) == ("k1", None)
    assert [role(config, s).model for s in STAGES] == ["m", "j"]


def test_a_judge_only_run_has_a_generation_stage_that_sends_nothing(tmp_path):
    config = dataclasses.replace(_config(), judge_only=True)
    with Store.open(tmp_path / "run") as store:
        gen, judge = build_stages(config, store, {"gen": None, "judge": None}, None, None)
    assert isinstance(gen.client, NoGeneration) and not gen.batched
    assert gen.endpoint_summary() == []
    assert isinstance(judge.client, EndpointPool)


def test_signals_are_removed_and_the_drain_handler_unset_on_every_exit():
    async def go():
        loop = asyncio.get_running_loop()
        stops = []
        with contextlib.suppress(RuntimeError):
            async with contextlib.AsyncExitStack() as scope:
                signals = scope.enter_context(RunSignals())
                drain = scope.enter_context(Drain(signals, lambda: stops.append(1), 5.0))
                assert signals.handler is not None
                signals._on_signal("SIGINT")  # what the loop calls on a signal
                assert (stops, drain.at_once) == ([1], False)
                raise RuntimeError("the run failed")
        assert signals.handler is None
        # The handlers are gone: the loop no longer has one to remove.
        assert not loop.remove_signal_handler(signal.SIGINT)

    asyncio.run(go())


def test_a_stage_charges_its_own_meter():
    class Meter:
        def __init__(self):
            self.added = []

        def add(self, usage, price, probe=False):
            self.added.append((usage, price, probe))

    meter = Meter()
    stage = Stage("judge", NoGeneration(), Limits(None, None, None), meter=meter, price="p")
    stage.charge({"prompt_tokens": 3}, probe=True)
    assert meter.added == [({"prompt_tokens": 3}, "p", True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_session_ended_by_its_start_up_check_closes_all_it_opened(
    tmp_path, synthetic, sim_server
):
    """The metrics server, both stages' clients, the signal handlers and the run directory's
    lock are all opened before the judge turns out not to be served (exit 4); each is closed
    when `execute` returns, and no task of the session is left behind."""
    server = sim_server(served_names=("m",))
    port = _free_port()
    config = RunConfig(
        data=str(synthetic(3)),
        model="m",
        base_url=[server.base_url],
        judge_base_url=[server.base_url],
        judge_model="not-served",
    )
    run_dir = tmp_path / "run"

    async def go():
        options = RunOptions(progress_interval=None, metrics_port=port)
        result = await execute(run_dir, config, options=options)
        loop = asyncio.get_running_loop()
        left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        with socket.socket() as s:  # the metrics server let go of its port (loop still open)
            s.bind(("127.0.0.1", port))
        return result.exit_code, loop.remove_signal_handler(signal.SIGINT), left

    code, had_handler, tasks_left = asyncio.run(go())
    assert code == Exit.PREFLIGHT
    assert not had_handler and not tasks_left
    # Opening for writing takes the lock: StoreError ("in use") if it were still held.
    with Store.open(run_dir, create=False) as store:
        assert store.get_meta("config")["judge_model"] == "not-served"


def test_every_exit_code_has_one_meaning_and_help_prints_them_all():
    from evaluator.cli.parser import EXIT_CODES
    from evaluator.run.exits import MEANINGS, Exit

    assert set(MEANINGS) == set(Exit)
    listed = [int(line.split()[0]) for line in EXIT_CODES.splitlines()[1:] if line[2:4].strip()]
    assert listed == [int(code) for code in Exit]
