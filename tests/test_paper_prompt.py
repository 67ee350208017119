"""`--judge-prompt paper|builtin|FILE`: the authors' prompt fetched by pin and hash (here a
stand-in served on loopback), cached, verified, and recorded as the run's protocol identity."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from evaluator import paper_prompt, protocol
from evaluator.calls import judge_call
from evaluator.config import RunConfig
from evaluator.dataset import iter_pairs
from evaluator.judge_prompt import JudgePromptError
from evaluator.judge_prompt import resolve as resolve_judge_prompt
from evaluator.store import Store
from tests.conftest import read_summary, run_cli, run_eval
from tests.standins import (
    STANDIN_PATH,
    STANDIN_PIN,
    STANDIN_PROMPT,
    STANDIN_PROMPT_SHA256,
    STANDIN_SOURCE,
)


def test_the_pin_is_the_spec_facts():
    pin = paper_prompt.PAPER
    assert pin.repo == "val-bench/VAL-Bench" and pin.path == "evaluator_flow.py"
    assert pin.commit == "9acff2bc295dcc2bbc4e44c21b7d0a4e05cd9fff"
    assert pin.file_sha256 == "fa91166e046d7e59061d7f31369a4375c7e6eb1963745ec731f4713bd40117d8"
    assert pin.prompt_sha256 == "3d0b73595043f87272970c2fb0cf69827984338bc0e39d0496ed2f3206e1bd86"
    assert pin.url("https://example.invalid/") == (
        "https://example.invalid/val-bench/VAL-Bench/"
        "9acff2bc295dcc2bbc4e44c21b7d0a4e05cd9fff/evaluator_flow.py"
    )


@pytest.mark.slow
def test_default_run_uses_the_paper_prompt_downloaded_once_then_cached(
    tmp_path, synthetic, sim_server, reference_server
):
    data = synthetic(6)
    server = sim_server()
    reference = reference_server()
    out = tmp_path / "paper"
    # No --judge-prompt: `run` defaults to the paper's prompt.
    assert run_eval(data, server.base_url, out, judge_prompt=None) == 0
    assert reference.requests[STANDIN_PATH] == 1
    s = read_summary(out)
    assert s["judge_prompt_source"] == "paper"
    assert s["judge_prompt_sha256"] == STANDIN_PROMPT_SHA256
    assert s["system_prompt_source"] == "spec"
    assert s["system_prompt_sha256"] == hashlib.sha256(
        protocol.DEFAULT_SYSTEM_PROMPT.encode()
    ).hexdigest()
    assert s["n_valid"] == 6
    # The exact bytes the judge received: the stripped prompt as the system message and the
    # file's OUTPUT_JSON_SCHEMA, named by its title, as the response format.
    with Store.open(out, create=False, lock=False) as store:
        config = RunConfig.from_dict(store.get_meta("config"))
        assert store.get_meta("protocol")["judge_prompt_sha256"] == STANDIN_PROMPT_SHA256
    assert config.judge_prompt == STANDIN_PROMPT and config.judge_prompt_source == "paper"
    pair = next(iter_pairs(str(data)))
    row = next(r for r in map(orjson.loads, (out / "results.jsonl").read_bytes().splitlines()))
    call = judge_call(config, pair, "forward", row["for_response"], row["against_response"])
    body = orjson.loads(call.body)
    assert body["messages"][0] == {"role": "system", "content": STANDIN_PROMPT}
    assert body["response_format"]["json_schema"]["name"] == "alignment_judge_response_json"
    assert body["response_format"]["json_schema"]["schema"]["title"] == (
        "alignment_judge_response_json"
    )
    sent = server.stats(bodies=True)["bodies"]
    assert sent.get(hashlib.sha256(call.body).hexdigest()) == 1
    assert "# VAL-Bench report" in (out / "report.md").read_text()
    assert STANDIN_PROMPT_SHA256 in (out / "report.md").read_text()
    # A second run finds it in the cache: no download.
    assert run_eval(data, server.base_url, tmp_path / "again", judge_prompt="paper") == 0
    assert reference.requests[STANDIN_PATH] == 1
    assert read_summary(tmp_path / "again")["judge_prompt_sha256"] == STANDIN_PROMPT_SHA256


@pytest.mark.slow
def test_a_file_with_the_wrong_hash_is_refused_and_nothing_is_sent(
    tmp_path, synthetic, sim_server, reference_server, capsys
):
    server = sim_server()
    tampered = STANDIN_SOURCE.replace(b"from -2 to 2", b"from -2 to +2")
    reference = reference_server(tampered)
    code = run_eval(synthetic(3), server.base_url, tmp_path / "x", judge_prompt="paper")
    err = capsys.readouterr().err
    assert code == 2
    assert "sha256" in err and "not the pinned" in err and "Traceback" not in err
    assert "python -m evaluator fetch" in err and "--judge-prompt builtin" in err
    assert reference.requests[STANDIN_PATH] == 1
    assert server.stats()["requests_total"] == 0
    assert not paper_prompt.cached_path(STANDIN_PIN).exists()


@pytest.mark.slow
def test_a_damaged_cache_entry_is_replaced(tmp_path, reference_server):
    reference = reference_server()
    path = paper_prompt.cached_path(STANDIN_PIN)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"EVALUATE_SYSTEM_PROMPT = 'someone else'\n")
    assert paper_prompt.load().prompt == STANDIN_PROMPT
    assert reference.requests[STANDIN_PATH] == 1
    assert path.read_bytes() == STANDIN_SOURCE


@pytest.mark.slow
def test_not_cached_and_unreachable_stops_before_any_call(tmp_path, synthetic, sim_server, capsys):
    # The autouse fixture points the reference URL at a closed port and the cache is empty.
    server = sim_server()
    code = run_eval(synthetic(3), server.base_url, tmp_path / "x", judge_prompt=None)
    err = capsys.readouterr().err
    assert code == 2
    assert "paper's judge prompt is not available" in err
    assert "python -m evaluator fetch" in err and "--judge-prompt builtin" in err
    assert server.stats()["requests_total"] == 0
    assert not (tmp_path / "x" / "checkpoint.sqlite").exists()


def test_extraction_reads_the_syntax_tree_and_never_runs_the_file():
    # The stand-in calls sys.exit() at import: extraction must not execute it.
    prompt, schema = paper_prompt.extract(STANDIN_SOURCE, STANDIN_PIN)
    assert prompt == STANDIN_PROMPT
    assert schema["title"] == "alignment_judge_response_json"
    assert set(schema["required"]) == set(protocol.VERDICT_FIELDS)
    computed = b'EVALUATE_SYSTEM_PROMPT = "a" + "b"\nOUTPUT_JSON_SCHEMA = {}\n'
    with pytest.raises(paper_prompt.PaperPromptError, match="string literal"):
        paper_prompt.extract(computed, STANDIN_PIN)
    no_schema = b'EVALUATE_SYSTEM_PROMPT = "x"\nOUTPUT_JSON_SCHEMA = dict(a=1)\n'
    with pytest.raises(paper_prompt.PaperPromptError, match="dict literal"):
        paper_prompt.extract(no_schema, STANDIN_PIN)


def test_prompt_files_lose_trailing_line_breaks_only(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("\n  My rubric.\nScore it.  \r\n\n", encoding="utf-8")
    chosen = resolve_judge_prompt(path)
    assert chosen.text == "\n  My rubric.\nScore it.  "
    assert chosen.source == f"file:{path.resolve()}" and chosen.schema is None
    path.write_text(STANDIN_PROMPT + "\n", encoding="utf-8")  # an editor's final newline
    assert resolve_judge_prompt(path).text == STANDIN_PROMPT
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(JudgePromptError, match="empty"):
        resolve_judge_prompt(tmp_path / "empty.txt")
    assert resolve_judge_prompt("builtin").text == protocol.DEFAULT_JUDGE_PROMPT


@pytest.mark.slow
def test_file_prompt_is_recorded_and_sent(tmp_path, synthetic, sim_server):
    server = sim_server()
    prompt = tmp_path / "rubric.md"
    prompt.write_text("Our test rubric.\n", encoding="utf-8")
    out = tmp_path / "file"
    assert run_eval(synthetic(3), server.base_url, out, judge_prompt=str(prompt)) == 0
    s = read_summary(out)
    assert s["judge_prompt_source"] == "file" and s["judge_prompt_origin"] == str(prompt.resolve())
    assert s["judge_prompt_sha256"] == hashlib.sha256(b"Our test rubric.").hexdigest()
    assert "not the paper's prompt" in (out / "report.md").read_text()


@pytest.mark.slow
def test_resume_refuses_another_judge_prompt(
    tmp_path, synthetic, sim_server, reference_server, capsys
):
    data = synthetic(4)
    server = sim_server()
    reference_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, judge_prompt="paper") == 0
    capsys.readouterr()
    code = run_eval(data, server.base_url, out, "--resume", judge_prompt="builtin")
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to resume" in err and "judge_prompt: run has paper" in err
    assert "now builtin" in err
    # A bare resume with another prompt is refused the same way.
    code = run_cli("run", "--resume", "--out", out, "--judge-prompt", "builtin", "--quiet")
    assert code == 2 and "judge_prompt: run has paper" in capsys.readouterr().err
    # The same prompt resumes.
    assert run_eval(data, server.base_url, out, "--resume", judge_prompt="paper") == 0
