"""A real Prometheus server scrapes a running evaluator (against the simulated backend)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import orjson
import pytest

from tests.conftest import ROOT, spawn_run

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("CI") != "true":
    pytest.skip(
        "Debian's prometheus is not installed (.ci/run installs it)", allow_module_level=True
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = orjson.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(result: list[dict]) -> float:
    return sum(float(r["value"][1]) for r in result)


def _poll(port: int, expr: str, ok, timeout: float = 40.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _query(port, expr)
        if result and ok(_value(result)):
            return _value(result)
        time.sleep(0.5)
    raise AssertionError(f"{expr} never satisfied the check; last: {result}")


def test_prometheus_scrapes_a_running_evaluator(tmp_path, synthetic, sim_process):
    assert PROMETHEUS, "prometheus must be installed in CI"
    data = synthetic(2000)
    server = sim_process("--dataset", str(data), "--latency-ms", "100", "--latency-sigma", "0.1")
    metrics_port, prom_port = _free_port(), _free_port()
    caps = ("--concurrency", "4", "--judge-concurrency", "4")
    evaluator = spawn_run(
        data, server.base_url, tmp_path / "run", *caps, "--metrics-port", metrics_port
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: valbench\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.1)
        rate = _poll(prom_port, "sum(rate(valbench_requests_finished_total[5s]))", lambda v: v > 5)
        # 8 calls in flight at ~100 ms each: about 80 calls/s. Early rates are extrapolated: a range.
        assert 5 < rate < 400
        first = _poll(prom_port, "sum(valbench_pairs_finished_total)", lambda v: v > 0)
        _poll(prom_port, "sum(valbench_pairs_finished_total)", lambda v: v > first + 10)
        assert _value(_query(prom_port, 'up{job="valbench"}')) == 1
        assert _value(_query(prom_port, "valbench_pairs_expected")) == 2000
        latency = _query(
            prom_port,
            "histogram_quantile(0.5, sum by (le) "
            "(rate(valbench_request_duration_seconds_bucket[10s])))",
        )
        mean = _query(
            prom_port,
            "sum(rate(valbench_request_duration_seconds_sum[10s])) / "
            "sum(rate(valbench_request_duration_seconds_count[10s]))",
        )
        assert latency and mean
        # In seconds, and consistent with the histogram's own sum and count: every call waits
        # the server's ~0.1 s (never under 0.05 s); the median is under twice the mean
        # (Markov) and the interpolated p50 under 2.5 times the true median (the buckets'
        # widest step), however slow a busy machine makes the calls.
        assert 0.05 < _value(mean) and 0.05 < _value(latency) < 5 * _value(mean)
    finally:
        prom.send_signal(signal.SIGTERM)
        evaluator.send_signal(signal.SIGTERM)
        prom.wait(20)
        assert evaluator.wait(60) == 75


def _exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def test_every_metric_the_dashboard_queries_is_exported(tmp_path, synthetic, sim_process):
    import json
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "valbench-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"valbench_[a-z0-9_]+", e)}
    assert len(queried) >= 15

    data = synthetic(300)
    server = sim_process("--dataset", str(data), "--latency-ms", "200")
    port = _free_port()
    evaluator = spawn_run(data, server.base_url, tmp_path / "run", "--metrics-port", port)
    try:
        deadline = time.monotonic() + 30
        text = ""
        while "valbench_pairs_finished_total{" not in text:
            assert time.monotonic() < deadline, "no pair finished"
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
        missing = queried - _exported_names(text)
        assert not missing, f"the dashboard queries metrics that are not exported: {missing}"
    finally:
        evaluator.send_signal(signal.SIGTERM)
        evaluator.wait(60)


def test_scrape_configs_are_valid():
    import yaml

    promtool = shutil.which("promtool")
    static = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    if promtool:
        check = subprocess.run(
            [promtool, "check", "config", str(static)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    k8s = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus-kubernetes.yml").read_text())
    job = k8s["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    kept = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert kept[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
