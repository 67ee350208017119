"""The report's side process (results.parquet and plots): same outputs with or without it."""

from __future__ import annotations

import logging
import sys

import pyarrow.parquet as pq

from tests.conftest import read_results, run_cli, run_eval

PLOTS = ("score_distribution.png", "pac_by_issue_scale.png", "metrics_by_category.png")


def _outputs(out):
    table = pq.read_table(out / "results.parquet").to_pylist()
    pngs = {name: (out / "plots" / name).stat().st_size for name in PLOTS}
    return table, pngs


def test_side_process_and_fallback_write_the_same_outputs(
    tmp_path, synthetic, sim_server, monkeypatch, caplog
):
    data = synthetic(30)
    server = sim_server(persona="mixture", share=0.5)
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out) == 0
    with_child, pngs = _outputs(out)
    assert [r["id"] for r in with_child] == [r["id"] for r in read_results(out)]
    assert all(size > 1000 for size in pngs.values())

    # No side process (it cannot start): the parent writes the same files itself.
    for name in PLOTS:
        (out / "plots" / name).unlink()
    (out / "results.parquet").unlink()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    caplog.set_level(logging.WARNING)
    assert run_cli("report", out) == 0
    assert "side process failed" in caplog.text
    fallback, pngs_again = _outputs(out)
    assert fallback == with_child
    assert set(pngs_again) == set(pngs)
    assert not list(out.glob("*.tmp"))
