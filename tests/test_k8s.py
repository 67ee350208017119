"""deploy/k8s: the manifests pass the Kubernetes API schemas (strict, offline), and
render.py fills them from a run config the evaluator itself accepts."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from evaluator.cli.cmd_run import config_from_args
from evaluator.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE_FILES = sorted(p for p in K8S.glob("*.yaml"))
# The oldest Kubernetes the manifests are for: podReplacementPolicy and
# backoffLimitPerIndex are beta (on by default) from 1.29; checked here on 1.31.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def assert_valid(docs: list[dict]) -> None:
    for doc in docs:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message} "
                    f"at {list(exc.path)}"
                )


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def render(tmp_path: Path, config_text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "run.toml"
    cfg.write_text(config_text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(K8S / "render.py"), "--config", str(cfg), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered_docs(out: Path) -> list[dict]:
    return [d for p in sorted(out.glob("*.yaml")) for d in load_docs(p)]


def container(pod_owner: dict) -> dict:
    (c,) = pod_owner["spec"]["template"]["spec"]["containers"]
    return c


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    out = []
    for arg in args:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value)
        out.append(arg)
    return out


def test_base_manifests_pass_strict_validation():
    docs = [d for p in BASE_FILES for d in load_docs(p)]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Job",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "Service",
    ]
    assert_valid(docs)


def test_strict_validation_catches_an_unknown_field():
    # Guard for the checks above: a misspelt field must fail, not pass unnoticed.
    job = copy.deepcopy(by_kind(load_docs(K8S / "evaluator-shards.yaml"), "Job"))
    container(job)["commandd"] = ["python"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_evaluator_pods_are_scraped_by_the_kubernetes_prometheus_config():
    job = by_kind(load_docs(K8S / "evaluator-shards.yaml"), "Job")
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-kubernetes.yml").read_text())
    relabel = prom["scrape_configs"][0]["relabel_configs"]
    keep = next(r for r in relabel if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert annotations["prometheus.io/scrape"] == keep["regex"] == "true"
    sources = {s for r in relabel for s in r.get("source_labels", [])}
    assert "__meta_kubernetes_pod_annotation_prometheus_io_port" in sources
    assert "__meta_kubernetes_pod_annotation_prometheus_io_path" in sources
    # The annotated port and path are where the evaluator serves its metrics.
    c = container(job)
    args = build_parser().parse_args(
        [
            *c["command"][3:],
            *expand(c["args"], {"JOB_COMPLETION_INDEX": "0", "VALBENCH_SHARDS": "4"}),
        ]
    )
    assert str(args.metrics_port) == annotations["prometheus.io/port"]
    assert args.metrics_host == "0.0.0.0"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert {"name": "metrics", "containerPort": args.metrics_port} in c["ports"]


JUDGE_VLLM_CONFIG = """\
data = "hf:val-bench/VAL-Bench"
concurrency = 96

[model]
name = "gpt-4o-mini"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[judge]
name = "google/gemma-3-27b-it"

[judge.vllm]
gpus = "0-3"
tensor_parallel = 2
max_model_len = 12288
"""


@pytest.mark.slow
def test_rendered_from_a_run_config(tmp_path, reference_server):
    out = tmp_path / "k8s"
    proc = render(
        tmp_path,
        JUDGE_VLLM_CONFIG,
        "--out",
        str(out),
        "--shards",
        "6",
        "--parallelism",
        "3",
        "--image",
        "registry.example/valbench:1.2",
        "--results-size",
        "50Gi",
        "--namespace",
        "evals",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "00-run-config.yaml",
        "10-storage.yaml",
        "20-judge-vllm.yaml",
        "30-evaluator-shards.yaml",
        "40-merge-job.yaml",
    ]
    docs = rendered_docs(out)
    assert_valid(docs)
    assert {d["metadata"]["namespace"] for d in docs} == {"evals"}

    job = by_kind(docs, "Job", "valbench-shards")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 6 and job["spec"]["parallelism"] == 3
    c = container(job)
    assert c["image"] == "registry.example/valbench:1.2"
    (wait,) = job["spec"]["template"]["spec"]["initContainers"]
    assert wait["image"] == c["image"] and "http://valbench-judge:8000/health" in wait["command"][2]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["VALBENCH_SHARDS"] == "6"
    # Index 5's pod, as the evaluator's own parser reads its command line.
    args = build_parser().parse_args(
        [*c["command"][3:], *expand(c["args"], {**env, "JOB_COMPLETION_INDEX": "5"})]
    )
    assert c["command"][:4] == ["python", "-m", "evaluator", "run"]
    assert args.shard == "5/6" and args.resume
    assert str(args.out) == "/results/shards/shard-5"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(args.config).startswith(mounts["run-config"] + "/")
    assert str(args.out).startswith(mounts["results"] + "/")

    # The ConfigMap's run config, read as the pod reads it: the judge is the cluster's
    # Service (no [judge.vllm] servers started inside the pod).
    cm = by_kind(docs, "ConfigMap")
    pod_cfg = tmp_path / "pod-run.toml"
    pod_cfg.write_text(cm["data"]["run.toml"], encoding="utf-8")
    args.config = pod_cfg
    reference_server()  # the pod fetches the paper's prompt (here a stand-in on loopback)
    config = config_from_args(args)
    config.validate()
    assert config.judge_prompt_source == "paper"
    assert config.model == "gpt-4o-mini" and config.concurrency == 96
    assert config.judge_model == "google/gemma-3-27b-it"
    assert config.judge_vllm is None
    assert config.judge_base_url == ["http://valbench-judge:8000/v1"]
    assert config.shard == "5/6"

    # The judge: [judge.vllm] describes 2 servers of 2 GPUs each.
    deployment = by_kind(docs, "Deployment", "valbench-judge")
    assert deployment["spec"]["replicas"] == 2
    vllm = container(deployment)
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert vllm["args"][0] == "google/gemma-3-27b-it"
    flags = vllm["args"][1:]
    pairs = dict(zip(flags, [*flags[1:], None], strict=True))
    assert pairs["--served-model-name"] == "google/gemma-3-27b-it"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--max-model-len"] == "12288"
    assert pairs["--port"] == "8000"
    assert "--enable-prefix-caching" in flags
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    cache = next(v for v in volumes if "persistentVolumeClaim" in v)
    assert cache["persistentVolumeClaim"]["claimName"] == "valbench-model-cache"
    service = by_kind(docs, "Service", "valbench-judge")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs["valbench-results"]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert "valbench-model-cache" in pvcs

    merge = by_kind(docs, "Job", "valbench-merge")
    (script,) = container(merge)["args"]
    assert "-m evaluator merge /results/merged /results/shards/shard-*" in script
    assert build_parser().parse_args(["merge", "/results/merged", "/results/shards/shard-0"])


@pytest.mark.slow
def test_shard_count_from_the_config_and_an_external_judge(tmp_path):
    out = tmp_path / "k8s"
    # A stale judge Deployment from an earlier render must not stay next to the new files.
    out.mkdir()
    (out / "20-judge-vllm.yaml").write_text("stale", encoding="utf-8")
    config = (
        'data = "sample"\nshard = "0/3"\nmodel = "m"\nbase_url = "https://api.example/v1"\n'
        'judge_model = "j"\njudge_base_url = "https://judge.example/v1"\n'
    )
    proc = render(tmp_path, config, "--out", str(out), "--external-judge")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "20-judge-vllm.yaml").exists()
    docs = rendered_docs(out)
    assert_valid(docs)
    assert not [d for d in docs if d["kind"] in ("Deployment", "Service")]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == [
        "valbench-results"
    ]
    job = by_kind(docs, "Job", "valbench-shards")
    assert job["spec"]["completions"] == 3
    assert not any(a.startswith("--judge-base-url") for a in container(job)["args"])
    assert "initContainers" not in job["spec"]["template"]["spec"]
    pod_config = tomllib.loads(by_kind(docs, "ConfigMap")["data"]["run.toml"])
    assert pod_config["judge_base_url"] == "https://judge.example/v1"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ('data = "sample"\nmodel = "m"\nbase_url = "http://x/v1"\nmodle = 1\n', (), "modle"),
        ('data = "sample"\nmodel = "m"\n', ("--shards", "2"), "--base-url"),
        ('data = "sample"\nmodel = "m"\nbase_url = "http://x/v1"\n', (), "--shards"),
        (
            'data = "sample"\nmodel = "m"\nbase_url = "http://x/v1"\n',
            ("--shards", "2", "--results-size", "lots"),
            "--results-size",
        ),
        (
            'data = "sample"\nmodel = "m"\nbase_url = "http://x/v1"\n[judge.vllm]\ngpu = 1\n',
            ("--shards", "2"),
            "gpu",
        ),
    ],
)
def test_render_refuses_a_bad_config_naming_the_fault(tmp_path, config, flags, message):
    out = tmp_path / "k8s"
    proc = render(tmp_path, config, "--out", str(out), *flags)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not out.exists()


@pytest.mark.slow
def test_model_served_by_vllm_inside_each_shard_pod(tmp_path):
    # [model.vllm]: every shard pod starts its own model servers, so it asks for their
    # GPUs, and the config it reads numbers them as the pod sees them (0..k-1).
    config = (
        'data = "sample"\nshard = "0/2"\n\n[model]\nname = "org/model-7b"\n\n'
        '[model.vllm]\ngpus = "4-7"\ntensor_parallel = 2\n\n[judge]\nname = "org/judge"\n'
    )
    out = tmp_path / "k8s"
    proc = render(tmp_path, config, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    docs = rendered_docs(out)
    assert_valid(docs)
    job = by_kind(docs, "Job", "valbench-shards")
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 4
    pod_config = tomllib.loads(by_kind(docs, "ConfigMap")["data"]["run.toml"])
    assert pod_config["model"]["vllm"] == {"gpus": "0-3", "tensor_parallel": 2}
    judge = container(by_kind(docs, "Deployment", "valbench-judge"))
    assert judge["args"][0] == "org/judge"
    assert judge["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.slow
def test_wait_for_judge_init_container_returns_once_the_judge_answers(sim_server):
    job = by_kind(load_docs(K8S / "evaluator-shards.yaml"), "Job")
    (wait,) = job["spec"]["template"]["spec"]["initContainers"]
    assert wait["command"][:2] == ["python", "-c"]
    server = sim_server()  # a real HTTP server answering GET /health, as vLLM does
    health = server.base_url.removesuffix("/v1") + "/health"
    script = wait["command"][2].replace("http://valbench-judge:8000/health", health)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
