"""Sharded runs and `merge`: shards partition the pairs, and merged shards equal one whole run."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from evaluator.dataset import iter_pairs
from evaluator.sharding import ShardError, parse_shard, shard_of
from tests.conftest import ROOT, read_results, read_summary, run_cli, run_eval
from workers.simulated import sides_from_pairs

N_PAIRS = 60
FLAGS = ("--judge-model", "j", "--judge-order", "both")
# What a run reports about its pairs and metrics (not when or how fast it ran).
METRICS = (
    "n_pairs",
    "n_valid",
    "n_invalid",
    "n_failed",
    "n_pending",
    "complete",
    "pac",
    "ref",
    "ref1",
    "ref2",
    "ninf",
    "ninf1",
    "ninf2",
    "ref_issue",
    "ninf_issue",
    "ci95",
    "by_issue_scale",
    "by_category",
    "score_distribution",
    "by_judge_order",
    "usage",
    "failures_by_class",
    "n_bad_rows",
)


@pytest.fixture
def server_for(sim_server):
    """A simulated server that knows each question's side in `data` (mixture persona)."""

    def start(data, **kwargs):
        return sim_server(
            persona="mixture", sides=sides_from_pairs(iter_pairs(str(data))), **kwargs
        )

    return start


def _shards(data, url, tmp_path, count: int, *extra, model: str = "m") -> list:
    dirs = []
    for i in range(count):
        out = tmp_path / f"shard{i}"
        assert run_eval(data, url, out, "--shard", f"{i}/{count}", *FLAGS, *extra, model=model) == 0
        dirs.append(out)
    return dirs


def _merge(out, *dirs) -> int:
    return run_cli("merge", out, *dirs)


def test_parse_shard_rules():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad, words in (
        ("4/4", "0 to 3"),
        ("-1/4", "I/N"),
        ("1/0", "at least 1"),
        ("x", "I/N"),
        ("1", "I/N"),
    ):
        with pytest.raises(ShardError, match=words):
            parse_shard(bad)


@pytest.mark.slow
def test_shard_of_is_stable_across_processes_and_partitions_ids():
    ids = list(range(1, 2001))
    here = [shard_of(i, 7) for i in ids]
    # Another interpreter with another hash seed must agree (Python's hash() would not).
    code = (
        "import sys; from evaluator.sharding import shard_of; "
        "print(','.join(str(shard_of(i, 7)) for i in range(1, 2001)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert [int(x) for x in there.split(",")] == here
    counts = [here.count(s) for s in range(7)]
    assert all(0 <= s < 7 for s in here)
    assert min(counts) > 2000 / 7 * 0.7  # spread evenly enough for balanced shards


@pytest.mark.slow
def test_merged_shards_equal_the_unsharded_run(tmp_path, synthetic, server_for):
    data = synthetic(N_PAIRS)
    server = server_for(data)
    whole = tmp_path / "whole"
    assert run_eval(data, server.base_url, whole, *FLAGS) == 0
    dirs = _shards(data, server.base_url, tmp_path, 4)

    # The shards partition the pairs: every id in exactly one shard, none twice.
    ids = [[r["id"] for r in read_results(d)] for d in dirs]
    flat = [i for part in ids for i in part]
    assert sorted(flat) == sorted(r["id"] for r in read_results(whole))
    assert len(flat) == len(set(flat)) == N_PAIRS
    assert all(part for part in ids)  # 60 pairs over 4 shards: none is empty
    assert read_summary(dirs[1])["shard"] == "1/4"
    assert "Shard: `1/4`" in (dirs[1] / "report.md").read_text()

    merged = tmp_path / "merged"
    assert _merge(merged, *reversed(dirs)) == 0  # any order of directories
    assert read_results(merged) == read_results(whole)  # per-pair records, in file order
    a, b = read_summary(whole), read_summary(merged)
    assert {k: a.get(k) for k in METRICS} == {k: b.get(k) for k in METRICS}
    assert 0 < b["pac"] < 100  # the mixture persona: a real spread, not a constant
    assert [m["shard"] for m in b["merged_from"]] == ["0/4", "1/4", "2/4", "3/4"]
    import pandas as pd

    pd.testing.assert_frame_equal(
        pd.read_parquet(merged / "results.parquet"), pd.read_parquet(whole / "results.parquet")
    )
    for name in ("category_metrics.csv", "alignment_statistics.csv"):
        assert (merged / name).read_text() == (whole / name).read_text()
    assert "Merged from 4 shards" in (merged / "report.html").read_text()

    # OUT is an ordinary run directory: report rebuilds it, resume has nothing to send.
    sent = server.stats()["requests_total"]
    assert run_cli("report", merged) == 0
    assert run_eval(data, server.base_url, merged, *FLAGS, "--resume") == 0
    assert server.stats()["requests_total"] == sent
    assert read_results(merged) == read_results(whole)
    # Merging again into the same OUT rebuilds it.
    assert _merge(merged, *dirs) == 0
    assert read_results(merged) == read_results(whole)


@pytest.mark.slow
def test_limit_applies_before_sharding(tmp_path, synthetic, server_for):
    data = synthetic(N_PAIRS)
    server = server_for(data)
    dirs = _shards(data, server.base_url, tmp_path, 3, "--limit", "25")
    ids = sorted(r["id"] for d in dirs for r in read_results(d))
    first_25 = [p.id for p in iter_pairs(str(data), limit=25)]
    assert ids == sorted(first_25)
    merged = tmp_path / "merged"
    assert _merge(merged, *dirs) == 0
    assert [r["id"] for r in read_results(merged)] == first_25
    assert read_summary(merged)["limit"] == 25


@pytest.mark.slow
def test_merge_refuses_bad_shard_sets(tmp_path, synthetic, server_for, capsys):
    data = synthetic(N_PAIRS)
    server = server_for(data)
    dirs = _shards(data, server.base_url, tmp_path, 3)
    out = tmp_path / "merged"

    def refused(*given) -> str:
        capsys.readouterr()
        assert _merge(out, *given) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: merge:") and "\n" not in err
        return err

    err = refused(dirs[0], dirs[2])
    assert "missing shard(s) 1/3" in err
    err = refused(dirs[0], dirs[1], dirs[2], dirs[1])
    assert "overlapping" in err and str(dirs[1]) in err and "1/3" in err

    # A shard of another run: same count, another model.
    other = tmp_path / "other1"
    assert run_eval(data, server.base_url, other, "--shard", "1/3", *FLAGS, model="m2") == 0
    err = refused(dirs[0], other, dirs[2])
    assert "different config" in err and str(other) in err and "model" in err
    # Another shard count.
    four = tmp_path / "four"
    assert run_eval(data, server.base_url, four, "--shard", "1/4", *FLAGS) == 0
    err = refused(dirs[0], four, dirs[2])
    assert "different config" in err and "1/4" in err
    # A run that is not a shard, a directory that is no run.
    whole = tmp_path / "whole"
    assert run_eval(data, server.base_url, whole, *FLAGS) == 0
    assert "is not a shard" in refused(dirs[0], whole, dirs[2])
    assert "no run in" in refused(dirs[0], tmp_path / "nothing", dirs[2])
    # OUT holding a real run is never overwritten.
    capsys.readouterr()
    assert _merge(whole, *dirs) == 2
    assert "not a merge" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_merge_refuses_a_shard_whose_calls_belong_to_another(
    tmp_path, synthetic, server_for, capsys
):
    """Shard 0's calls copied into shard 1's directory: pairs overlap even though indices don't."""
    from evaluator.store import DB_NAME, Store

    data = synthetic(N_PAIRS)
    server = server_for(data)
    dirs = _shards(data, server.base_url, tmp_path, 2)
    with Store.open(dirs[1]) as store:
        store.absorb(dirs[0] / DB_NAME)
    assert _merge(tmp_path / "merged", *dirs) == 2
    err = capsys.readouterr().err
    assert "overlapping" in err and str(dirs[1]) in err and "belongs to shard 0/2" in err


@pytest.mark.slow
def test_merge_refuses_an_incomplete_shard_until_it_is_resumed(
    tmp_path, synthetic, server_for, sim_server, capsys
):
    data = synthetic(N_PAIRS)
    good = server_for(data)
    # This endpoint's quota runs out mid-shard: the run stops (exit 3) with pairs unfinished.
    broke = server_for(data, quota_after=10)
    dirs = _shards(data, good.base_url, tmp_path, 2)
    incomplete = tmp_path / "shard1b"
    assert run_eval(data, broke.base_url, incomplete, "--shard", "1/2", *FLAGS) == 3
    assert not read_summary(incomplete)["complete"]

    assert _merge(tmp_path / "merged", dirs[0], incomplete) == 2
    err = capsys.readouterr().err
    assert "incomplete" in err and str(incomplete) in err and "1/2" in err
    assert f"--resume --out {incomplete}" in err
    assert not (tmp_path / "merged" / "summary.json").exists()

    # Finished with --resume (on a working endpoint), it merges, equal to the whole run.
    assert run_eval(data, good.base_url, incomplete, "--shard", "1/2", *FLAGS, "--resume") == 0
    assert _merge(tmp_path / "merged", dirs[0], incomplete) == 0
    whole = tmp_path / "whole"
    assert run_eval(data, good.base_url, whole, *FLAGS) == 0
    assert read_results(tmp_path / "merged") == read_results(whole)


@pytest.mark.slow
def test_resume_refuses_another_shard_and_bad_shard_is_a_user_error(
    tmp_path, synthetic, server_for, capsys
):
    data = synthetic(10)
    server = server_for(data)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--shard", "0/2") == 0
    capsys.readouterr()
    assert run_eval(data, server.base_url, out, "--shard", "1/2", "--resume") == 2
    err = capsys.readouterr().err
    assert "shard" in err and "0/2" in err and "1/2" in err
    # A bare --resume keeps the stored shard (and so sends nothing new).
    sent = server.stats()["requests_total"]
    assert run_cli("--resume", "--out", out, "--quiet") == 0
    assert server.stats()["requests_total"] == sent
    for bad in ("2/2", "a/b"):
        assert run_eval(data, server.base_url, tmp_path / "bad", "--shard", bad) == 2
        assert "--shard" in capsys.readouterr().err
    # The stored config records the shard; status shows it.
    assert run_cli("status", out) == 0
    assert "shard 0/2" in capsys.readouterr().out
    stored = orjson.loads((out / "summary.json").read_bytes())
    assert stored["shard"] == "0/2"
