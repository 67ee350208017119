"""Render the Kubernetes manifests in this folder for one run config.

    python deploy/k8s/render.py --config run.toml --shards 8 --image REGISTRY/valbench:TAG \
        --out k8s-out/

reads the run config with the evaluator's own loader (a config the evaluator
would refuse is refused here, with the same message) and writes this folder's
manifests with the run's values filled in:

- the ConfigMap holds the run config the pods read (`[judge.vllm]` removed: in
  the cluster the judge is the vLLM Deployment, not servers each pod starts);
- the judge Deployment serves the config's judge model with the flags the
  evaluator itself gives vLLM, sized from `[judge.vllm]` (tensor_parallel GPUs a
  replica; as many replicas as the table describes servers, unless --judge-replicas);
- the Indexed Job has one completion per shard; with `[model.vllm]` each shard pod
  asks for the GPUs of its own model servers;
- image, namespace and volume sizes from the flags.

Apply `00-*` to `30-*` first and `40-merge-job.yaml` once the shards have
completed (deploy/README.md). The base manifests stay valid YAML that can be
applied by hand; this script changes named fields of them, not text, so its
output always parses.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
import yaml

HERE = Path(__file__).resolve().parent
# Base manifest -> rendered file name; the numbers give the order to apply them in.
FILES = {
    "run-config.yaml": "00-run-config.yaml",
    "storage.yaml": "10-storage.yaml",
    "judge-vllm.yaml": "20-judge-vllm.yaml",
    "evaluator-shards.yaml": "30-evaluator-shards.yaml",
    "merge-job.yaml": "40-merge-job.yaml",
}
JUDGE_PORT = 8000
JUDGE_SERVICE_URL = f"http://valbench-judge:{JUDGE_PORT}/v1"
# Kubernetes resource quantities (e.g. 20Gi, 500M, 1.5T).
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


class RenderError(Exception):
    """A setting is wrong; the message names it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python deploy/k8s/render.py",
        description="Fill deploy/k8s's manifests from a valbench run config (TOML).",
    )
    p.add_argument("--config", type=Path, required=True, help="the run config (TOML)")
    p.add_argument("--out", type=Path, required=True, help="folder for the rendered manifests")
    p.add_argument(
        "--shards", type=int, help='shard count N (default: N of the config\'s shard = "I/N")'
    )
    p.add_argument("--parallelism", type=int, help="shards running at once (default: all)")
    p.add_argument("--image", default="valbench-evaluator:latest", help="evaluator image")
    p.add_argument("--namespace", help="namespace for every object (default: kubectl's)")
    p.add_argument("--results-size", default="20Gi", help="results volume size (20Gi)")
    p.add_argument("--model-cache-size", default="200Gi", help="model cache volume size")
    p.add_argument("--storage-class", help="storage class of both volumes (ReadWriteMany)")
    p.add_argument(
        "--external-judge",
        action="store_true",
        help="use the config's judge endpoint as it is: no vLLM judge Deployment",
    )
    p.add_argument("--judge-image", help="vLLM image (default: the base manifest's)")
    p.add_argument(
        "--judge-replicas",
        type=int,
        help="vLLM judge replicas (default: as many servers as [judge.vllm] describes, or 1)",
    )
    return p.parse_args(argv)


def load_run_config(path: Path, judge_url: str | None = None) -> Any:
    """The run config as `python -m evaluator run --config PATH [--judge-base-url URL]`
    builds it (`judge_url`: the flag the Job gives the pods), with the evaluator's loader."""
    from evaluator.config import ConfigError
    from evaluator.config import load_run_config as load

    flags = {"judge_base_url": [judge_url]} if judge_url else {}
    try:
        # The pods fetch the paper's prompt (or read it from their cache): not needed here.
        return load(path, flags, fetch_paper=False)
    except ConfigError as exc:
        raise RenderError(str(exc)) from None


def check_pod_config(text: str, judge_url: str | None) -> None:
    """Refuse to render a config the pods' `run` command would refuse."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_run_config(path, judge_url)
        except RenderError as exc:
            raise RenderError(f"the pods' run config would be refused: {exc}") from None


def judge_settings(config: Any) -> Any:
    """The judge's server settings: `[judge.vllm]` with the evaluator's judge defaults."""
    from evaluator import servers
    from workers.server_settings import ServerSettings

    if config.judge_vllm is not None:
        return servers.settings(config, "judge")
    return ServerSettings.from_dict(dict(servers.JUDGE_DEFAULTS), where="[judge.vllm]")


def shard_count(config: Any, given: int | None) -> int:
    if given is not None:
        if given < 1:
            raise RenderError(f"--shards must be at least 1, got {given}")
        return given
    if config.shard:
        from evaluator.sharding import parse_shard

        return parse_shard(config.shard)[1]
    raise RenderError('give --shards N (or shard = "0/N" in the run config)')


def pod_config_text(path: Path, judge_in_cluster: bool, model_gpus: int | None) -> str:
    """The run config the pods read, as TOML.

    Without `[judge.vllm]` when the judge is the cluster's Deployment; with
    `[model.vllm]` GPUs renumbered 0..k-1, the ids a pod given k GPUs sees.
    """
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    if judge_in_cluster:
        raw.pop("judge_vllm", None)
        raw.pop("judge_base_url", None)
        judge = raw.get("judge")
        if isinstance(judge, dict):
            judge.pop("vllm", None)
            judge.pop("base_url", None)
    if model_gpus:
        model = raw.get("model")
        table = model.get("vllm") if isinstance(model, dict) else raw.get("vllm")
        table["gpus"] = f"0-{model_gpus - 1}"
    return tomli_w.dumps(raw)


def _quantity(value: str, flag: str) -> str:
    if not _QUANTITY.match(value):
        raise RenderError(f"{flag} must be a Kubernetes quantity such as 20Gi, got {value!r}")
    return value


def _set_arg(args: list[str], flag: str, value: str | None) -> list[str]:
    """`args` with `flag=VALUE` in place of any `flag=...` (removed when value is None)."""
    out = [a for a in args if not a.startswith(flag + "=")]
    if value is not None:
        out.append(f"{flag}={value}")
    return out


def load_base() -> dict[str, list[dict[str, Any]]]:
    return {
        name: [d for d in yaml.safe_load_all((HERE / name).read_text(encoding="utf-8")) if d]
        for name in FILES
    }


def render(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The manifests for `args`, file by file (rendered file name -> documents)."""
    for value, flag in (
        (args.parallelism, "--parallelism"),
        (args.judge_replicas, "--judge-replicas"),
    ):
        if value is not None and value < 1:
            raise RenderError(f"{flag} must be at least 1, got {value}")
    in_cluster = not args.external_judge
    config = load_run_config(args.config)
    shards = shard_count(config, args.shards)
    model_gpus = None
    if config.vllm is not None:
        from evaluator import servers

        model_gpus = len(servers.settings(config, "model").gpus)
    try:
        config_text = pod_config_text(args.config, in_cluster, model_gpus)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RenderError(f"cannot read config file {args.config}: {exc}") from None
    check_pod_config(config_text, JUDGE_SERVICE_URL if in_cluster else None)

    base = copy.deepcopy(load_base())
    out: dict[str, list[dict[str, Any]]] = {}

    (cm,) = base["run-config.yaml"]
    cm["data"]["run.toml"] = config_text
    out[FILES["run-config.yaml"]] = [cm]

    sizes = {
        "valbench-results": _quantity(args.results_size, "--results-size"),
        "valbench-model-cache": _quantity(args.model_cache_size, "--model-cache-size"),
    }
    pvcs = []
    for pvc in base["storage.yaml"]:
        name = pvc["metadata"]["name"]
        if name == "valbench-model-cache" and not in_cluster:
            continue  # no vLLM in the cluster, no weights to cache
        pvc["spec"]["resources"]["requests"]["storage"] = sizes[name]
        if args.storage_class:
            pvc["spec"]["storageClassName"] = args.storage_class
        pvcs.append(pvc)
    out[FILES["storage.yaml"]] = pvcs

    if in_cluster:
        settings = judge_settings(config)
        deployment, service = base["judge-vllm.yaml"]
        spec = deployment["spec"]
        spec["replicas"] = args.judge_replicas or len(settings.groups())
        (vllm,) = spec["template"]["spec"]["containers"]
        if args.judge_image:
            vllm["image"] = args.judge_image
        # The same flags the evaluator gives the servers it manages; the served name is
        # the config's judge model, so the evaluator's requests match it.
        vllm["args"] = [
            settings.model or config.judge_model,
            *settings.vllm_args(config.judge_model, "0.0.0.0", JUDGE_PORT),
        ]
        vllm["resources"]["limits"]["nvidia.com/gpu"] = settings.tensor_parallel
        out[FILES["judge-vllm.yaml"]] = [deployment, service]

    (job,) = base["evaluator-shards.yaml"]
    job["spec"]["completions"] = shards
    job["spec"]["parallelism"] = min(args.parallelism or shards, shards)
    pod = job["spec"]["template"]["spec"]
    (evaluator,) = pod["containers"]
    evaluator["image"] = args.image
    if in_cluster:
        for init in pod["initContainers"]:
            init["image"] = args.image
    else:
        del pod["initContainers"]  # waits for the in-cluster judge only
    for env in evaluator["env"]:
        if env["name"] == "VALBENCH_SHARDS":
            env["value"] = str(shards)
    evaluator["args"] = _set_arg(
        evaluator["args"], "--judge-base-url", JUDGE_SERVICE_URL if in_cluster else None
    )
    if model_gpus:
        evaluator["resources"].setdefault("limits", {})["nvidia.com/gpu"] = model_gpus
    out[FILES["evaluator-shards.yaml"]] = [job]

    (merge,) = base["merge-job.yaml"]
    merge["spec"]["template"]["spec"]["containers"][0]["image"] = args.image
    out[FILES["merge-job.yaml"]] = [merge]

    for docs in out.values():
        for doc in docs:
            doc["metadata"].setdefault("labels", {})["valbench/model"] = _label(config.model)
            if args.namespace:
                doc["metadata"]["namespace"] = args.namespace
    return out


def _label(value: str) -> str:
    """`value` as a Kubernetes label value: [A-Za-z0-9._-], at most 63, alphanumeric ends."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", value)[:63]
    return text.strip("._-") or "unknown"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the run config) as literal blocks, readable in the ConfigMap."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def write(rendered: dict[str, list[dict[str, Any]]], out: Path, source: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(FILES.values()) - set(rendered):
        # e.g. a judge Deployment from an earlier render, before --external-judge
        (out / stale).unlink(missing_ok=True)
    written = []
    for name, docs in rendered.items():
        path = out / name
        header = f"# Rendered by deploy/k8s/render.py from {source.name}; re-render, do not edit.\n"
        body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
        path.write_text(header + body, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rendered = render(args)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in write(rendered, args.out, args.config):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
