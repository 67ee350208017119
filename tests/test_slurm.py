"""deploy/slurm on a real Slurm: a private one-node cluster on this machine (Debian's
packages, brought up by deploy/slurm/local-cluster.sh with everything under a temp dir:
munge's key and socket, slurm.conf and its state, spool, logs and pid files, two free
ports; SLURM_CONF points at it), the project's simulated backend as the model, and
simulated "vLLM" servers started by each array task through the evaluator's own server
manager. No GPU is needed; the job scripts are the ones users submit, pointed at this
checkout and this Python by environment variables. Nothing is installed here (.ci/run
installs the packages) and nothing outside the temp dir is written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.conftest import (
    ROOT,
    checkpoint_calls_so_far,
    read_results,
    read_summary,
    run_evaluator,
)

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

SLURM = ROOT / "deploy" / "slurm"
CLUSTER_SCRIPT = SLURM / "local-cluster.sh"
TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged", "mungekey")


def _skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "a local Slurm cluster needs root on Linux (slurmd starts the jobs)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        # CI installs them (.ci/run): there a missing tool is a failure, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm tools missing in CI: {', '.join(missing)}")
        return (
            f"Slurm and munge are not installed ({', '.join(missing)} missing; "
            ".ci/run installs Debian's slurmctld slurmd slurm-client munge)"
        )
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private one-node Slurm cluster for this module, all of it in a temp dir, with
    SLURM_CONF pointing at it while the module runs; torn down after it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("slurm")
    conf = where / "slurm.conf"
    up = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "up", str(where)], capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, f"local Slurm did not come up:\n{up.stdout}\n{up.stderr}"
        assert conf.is_file() and f"export SLURM_CONF={conf}" in up.stdout
        with pytest.MonkeyPatch.context() as mp:
            # Every sbatch/squeue/scancel of this module, and the jobs (sbatch passes the
            # environment on), use the private cluster.
            mp.setenv("SLURM_CONF", str(conf))
            yield conf
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "down", str(where)], capture_output=True, timeout=120
        )


def job_env() -> dict[str, str]:
    """What the job scripts need to run this checkout with this interpreter."""
    return {
        **os.environ,
        "VALBENCH_PYTHON": sys.executable,
        "VALBENCH_HOME": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def submit(config: Path, out: Path, shards: int, **env: str) -> tuple[str, str]:
    proc = subprocess.run(
        [
            "bash",
            str(SLURM / "submit.sh"),
            "--config",
            str(config),
            "--out",
            str(out),
            "--shards",
            str(shards),
        ],
        env={**job_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ids = dict(line.split("=", 1) for line in proc.stdout.split())
    return ids["array"], ids["merge"]


def queue(*job_ids: str) -> dict[str, str]:
    """Job (or array task, "12_3") id -> "STATE REASON", for those squeue still lists."""
    proc = subprocess.run(
        ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    rows = (line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())
    return {job: state for job, state in rows}


def wait_until_gone(*job_ids: str, timeout: float, out: Path) -> None:
    deadline = time.monotonic() + timeout
    while jobs := queue(*job_ids):
        if any("DependencyNeverSatisfied" in state for state in jobs.values()):
            pytest.fail(f"a shard failed, the merge will never start: {jobs}\n{logs(out)}")
        if time.monotonic() > deadline:
            pytest.fail(f"jobs still queued after {timeout}s: {jobs}\n{logs(out)}")
        time.sleep(0.3)


def logs(out: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted((out / "logs").glob("*"))
    )


def write_config(path: Path, data: Path, model_url: str, judge: str, **extra) -> Path:
    lines = [f'data = "{data}"', 'judge_prompt = "builtin"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in extra.items()]
    lines += ["", "[model]", 'name = "sim-model"', f'base_url = "{model_url}"']
    lines += ["", "[judge]", 'name = "sim-judge"', judge]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port_pair() -> int:
    """A port P with P and P+1 free on this machine now (for two tasks' metrics)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("0.0.0.0", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


def by_id(results: list[dict]) -> dict[int, dict]:
    return {r["id"]: r for r in results}


def test_job_array_of_shards_then_merge_equals_an_unsharded_run(
    slurm, tmp_path, synthetic, sim_process
):
    n, shards = 24, 4
    data = synthetic(n)
    model = sim_process("--dataset", str(data), "--latency-ms", "10")
    # Each array task starts its own judge server through the evaluator's manager,
    # exactly as it would start vLLM on a GPU node, with the simulator as the command.
    judge = (
        "[judge.vllm]\n"
        f'command = ["{{python}}", "-m", "workers.simulated", "--port", "{{port}}", '
        f'"--dataset", "{data}", "--served-model-name", "{{served_model_name}}"]\n'
        'gpus = "0"\n'
        "ready_timeout_s = 60\n"
    )
    config = write_config(
        tmp_path / "run.toml", data, model.base_url, judge, concurrency=4, judge_concurrency=4
    )
    out = tmp_path / "sharded"

    array_id, merge_id = submit(config, out, shards)
    wait_until_gone(array_id, merge_id, timeout=180, out=out)

    text = logs(out)
    for i in range(shards):
        shard_dir = out / "shards" / f"shard-{i}"
        s = read_summary(shard_dir)
        assert s["complete"] and s["shard"] == f"{i}/{shards}", text
        # The task's judge server ran and was stopped with the task.
        assert (shard_dir / "servers" / "judge-0.log").is_file()
    assert "evaluator exited with 0" in (out / "logs" / "shard-0.out").read_text()
    merged = read_summary(out / "merged")
    assert merged["complete"], text
    assert merged["n_pairs"] == n and merged["n_valid"] == n
    assert merged["n_failed"] == merged["n_pending"] == 0

    # The same config, unsharded, in one process: the same answers and verdicts.
    direct = tmp_path / "direct"
    proc = run_evaluator("run", "--config", config, "--out", direct, "--quiet", timeout=120)
    assert proc.returncode == 0, proc.stderr
    merged_rows = by_id(read_results(out / "merged"))
    assert sorted(merged_rows) == list(range(1, n + 1))
    assert merged_rows == by_id(read_results(direct))
    assert read_summary(out / "merged")["pac"] == read_summary(direct)["pac"]


def test_term_to_running_shards_drains_requeues_and_resumes(
    slurm, tmp_path, synthetic, sim_process
):
    """SIGTERM as a preemption or the time-limit warning sends it: the shard finishes its
    in-flight calls, exits 75, requeues itself and resumes; nothing is sent twice."""
    n, shards = 40, 2
    data = synthetic(n)
    # One simulated server for both stages, so it counts every call of the run.
    sim = sim_process("--dataset", str(data), "--latency-ms", "150")
    config = write_config(
        tmp_path / "run.toml",
        data,
        sim.base_url,
        f'base_url = "{sim.base_url}"',
        concurrency=2,
        judge_concurrency=2,
    )
    out = tmp_path / "sharded"
    metrics_base = free_port_pair()
    array_id, merge_id = submit(config, out, shards, VALBENCH_METRICS_PORT=str(metrics_base))

    # Once both shards are running and have answers recorded, TERM each: shard 0 the
    # way `scancel --full` does it (every process of the job), shard 1 as the time
    # limit's `--signal=B:TERM@120` does (the batch script alone).
    tasks = [f"{array_id}_{i}" for i in range(shards)]
    deadline = time.monotonic() + 120
    for i in range(shards):
        db = out / "shards" / f"shard-{i}" / "checkpoint.sqlite"
        while len(checkpoint_calls_so_far(db, "done")) < 4:
            assert time.monotonic() < deadline, f"shard {i} made no progress:\n{logs(out)}"
            time.sleep(0.1)
    # While they run, each task serves Prometheus metrics at the target it announced.
    for i, task in enumerate(tasks):
        announced = out / "metrics-targets" / f"valbench-{task}.json"
        (target,) = orjson.loads(announced.read_bytes())
        (address,) = target["targets"]
        assert address.endswith(f":{metrics_base + i}")
        assert target["labels"]["run_dir"] == str(out / "shards" / f"shard-{i}")
        url = f"http://127.0.0.1:{address.rsplit(':', 1)[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"valbench_pairs_remaining" in resp.read()
    done_before = {}
    for i, (task, how) in enumerate(zip(tasks, ("--full", "--batch"), strict=True)):
        subprocess.run(["scancel", "--signal=TERM", how, task], check=True, timeout=30)
        db = out / "shards" / f"shard-{i}" / "checkpoint.sqlite"
        done_before[i] = set(checkpoint_calls_so_far(db, "done"))

    wait_until_gone(array_id, merge_id, timeout=180, out=out)
    text = logs(out)
    for i in range(shards):
        log = (out / "logs" / f"shard-{i}.out").read_text()
        # Drained (exit 75), requeued by the script, resumed in the same job, completed.
        assert log.count("finishing in-flight calls") == 1, text
        assert "evaluator exited with 75" in log and "requeued job" in log, text
        assert "(restart 1)" in log and log.rstrip().endswith("evaluator exited with 0"), text
        db = out / "shards" / f"shard-{i}" / "checkpoint.sqlite"
        assert done_before[i] <= set(checkpoint_calls_so_far(db, "done"))
        assert read_summary(out / "shards" / f"shard-{i}")["possibly_duplicated_calls"] == 0

    merged = read_summary(out / "merged")
    assert merged["complete"] and merged["n_valid"] == n, text
    assert merged["possibly_duplicated_calls"] == 0
    assert list((out / "metrics-targets").iterdir()) == []  # ended tasks are not scraped
    # Two generations and one verdict per pair, each sent exactly once over both starts,
    # and one judge preflight test call per start (2 shards x 2 starts).
    assert sim.stats()["requests_total"] == 3 * n + 2 * 2


def test_one_node_script_starts_its_servers_and_completes_the_run(
    slurm, tmp_path, synthetic, sim_process
):
    n = 12
    data = synthetic(n)
    model = sim_process("--dataset", str(data))
    # Two "GPUs", one judge server each, started and stopped by the evaluator in the job.
    judge = (
        "[judge.vllm]\n"
        f'command = ["{{python}}", "-m", "workers.simulated", "--port", "{{port}}", '
        f'"--dataset", "{data}", "--served-model-name", "{{served_model_name}}"]\n'
        'gpus = "0-1"\n'
        "ready_timeout_s = 60\n"
    )
    config = write_config(tmp_path / "run.toml", data, model.base_url, judge)
    out = tmp_path / "overnight"
    log = tmp_path / "job.out"
    # The script asks for 8 GPUs; this node has none, so that request is lifted here.
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--gres=none",
            "--output",
            str(log),
            str(SLURM / "gpu-node.sbatch"),
        ],
        env={**job_env(), "VALBENCH_CONFIG": str(config), "VALBENCH_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while queue(job):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    text = log.read_text()
    assert text.rstrip().endswith("evaluator exited with 0"), text
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n and s["shard"] is None
    assert sorted(p.name for p in (out / "servers").glob("*.log")) == ["judge-0.log", "judge-1.log"]


def test_submit_refuses_bad_arguments_before_queueing_anything(tmp_path):
    # No cluster needed: these are refused before sbatch is called.
    config = tmp_path / "run.toml"
    config.write_text('data = "sample"\n', encoding="utf-8")
    cases = [
        (["--config", str(config), "--out", str(tmp_path / "o"), "--shards", "0"], "--shards"),
        (["--config", str(tmp_path / "nope.toml"), "--out", "o", "--shards", "2"], "nope.toml"),
        (["--config", str(config), "--out", "o", "--shards", "2", "--bogus"], "--bogus"),
    ]
    for args, fault in cases:
        proc = subprocess.run(
            ["bash", str(SLURM / "submit.sh"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert fault in proc.stderr.splitlines()[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool (Debian's prometheus) not installed"
)
def test_slurm_scrape_config_is_valid_prometheus_config():
    proc = subprocess.run(
        ["promtool", "check", "config", str(SLURM / "prometheus-slurm.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
