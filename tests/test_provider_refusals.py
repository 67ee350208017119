"""Provider-side refusals (chat finish_reason content_filter, Responses incomplete
content_filter, Anthropic stop_reason refusal, a request rejected by a content filter) are
the model's answer being a refusal: visible in results, counted in REF and issue-level
refusal, never a failure."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from evaluator.calls import judge_call
from evaluator.config import RunConfig
from evaluator.dataset import iter_pairs
from evaluator.pair_answers import REFUSED_ANSWER
from evaluator.store import Store
from tests.conftest import read_results, read_summary, run_eval
from workers.simulated import sides_from_pairs
from workers.simulated.data import synthetic_row
from workers.simulated.wire import MARK_CONTENT_FILTER

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

POLICY_400 = "[[sim:content_policy]]"


def _dataset(path):
    rows = [synthetic_row(i) for i in range(1, 11)]
    rows[1]["for_question"] += f" {MARK_CONTENT_FILTER}"  # id 2: the for answer withheld
    rows[3]["for_question"] += f" {MARK_CONTENT_FILTER}"  # id 4: both withheld
    rows[3]["against_question"] += f" {MARK_CONTENT_FILTER}"
    rows[5]["against_question"] += f" {POLICY_400}"  # id 6: the request rejected (HTTP 400)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.mark.parametrize("provider", ["openai", "openai-responses", "anthropic"])
def test_provider_refusals_are_counted_as_refusals(tmp_path, sim_server, provider):
    data = _dataset(tmp_path / "pairs.jsonl")
    server = sim_server(persona="consistent", sides=sides_from_pairs(iter_pairs(str(data))))
    out = tmp_path / provider
    extra = ("--provider", provider, "--judge-model", "simulated-judge")
    assert run_eval(data, server.base_url, out, *extra) == 0
    s = read_summary(out)
    assert s["n_failed"] == 0 and s["failures_by_class"] == {}
    assert s["n_valid"] == 10 and s["n_provider_refusals"] == 4
    # 7 consistent pairs (+2), id 4 both refuse (+2), ids 2 and 6 one refuses (0).
    assert s["pac"] == pytest.approx(100 * (16 / 10 + 2) / 4)
    assert s["ref"] == pytest.approx(100 * 4 / 20)  # four refusing answers of twenty
    assert s["ref1"] == pytest.approx(20.0) and s["ref2"] == pytest.approx(10.0)
    assert s["ref_issue"] == pytest.approx(30.0)
    rows = {r["id"]: r for r in read_results(out)}
    reason = "refusal" if provider == "anthropic" else "content_filter"
    assert rows[2]["status"] == "scored" and rows[2]["provider_refusals"] == {"for": reason}
    assert rows[2]["for_response"] == "" and rows[2]["verdict"]["person_1_refusal"] is True
    assert rows[2]["adjusted_score"] == 0
    assert rows[6]["provider_refusals"] == {"against": "content_filter"}
    assert rows[6]["verdict"]["person_2_refusal"] is True
    # Both withheld: no judge call; the pair scores +2 with both refusal flags.
    assert rows[4]["verdict_source"] == "provider_refusal"
    assert rows[4]["alignment_judge_response"] is None and rows[4]["adjusted_score"] == 2
    assert rows[4]["verdict"]["person_1_refusal"] and rows[4]["verdict"]["person_2_refusal"]
    assert server.stats()["by_kind"]["judge"] == 9 + 1  # + the judge's preflight test call
    # Final outcomes: a resume sends nothing.
    sent = server.stats()["requests_total"]
    assert run_eval(data, server.base_url, out, *extra, "--resume") == 0
    assert server.stats()["requests_total"] == sent
    assert read_summary(out)["pac"] == s["pac"]


def test_the_judge_reads_a_placeholder_for_the_withheld_answer(tmp_path, sim_server):
    data = _dataset(tmp_path / "pairs.jsonl")
    server = sim_server(persona="consistent")
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out) == 0
    with Store.open(out, create=False, lock=False) as store:
        config = RunConfig.from_dict(store.get_meta("config"))
    pair = next(p for p in iter_pairs(str(data)) if p.id == 2)
    against = next(r for r in read_results(out) if r["id"] == 2)["against_response"]
    call = judge_call(config, pair, "forward", REFUSED_ANSWER, against)
    assert REFUSED_ANSWER in orjson.loads(call.body)["messages"][1]["content"]
    assert server.stats(bodies=True)["bodies"].get(hashlib.sha256(call.body).hexdigest()) == 1
