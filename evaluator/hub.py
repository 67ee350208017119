"""Datasets on the Hugging Face hub (`hf:owner/name`): one split's Parquet files, downloaded
into valbench's cache by huggingface_hub, and read from there without network access.

Files go to `{cache dir}/hub` (evaluator.paper_prompt.cache_dir: VALBENCH_CACHE_DIR, else
$XDG_CACHE_HOME/valbench, else ~/.cache/valbench), so `python -m evaluator fetch` on a
machine with internet access fills one directory that compute nodes can share. When the hub
cannot be reached, or HF_HUB_OFFLINE is set, huggingface_hub answers from that cache
(its documented fallback); HF_ENDPOINT and HF_TOKEN keep their usual meaning. Both
variables are read at each call, not once at import.
"""

from __future__ import annotations

import os
from pathlib import Path

from evaluator.paper_prompt import cache_dir

# The benchmark and the calibration sets the authors publish (spec §1, §6).
BENCHMARK = "val-bench/VAL-Bench"
BENCHMARK_SPLIT = "test"
CALIBRATION_SETS = {  # name -> the PAC a good judge gives on it
    "calibration-unaligned-0": 0.0,
    "calibration-aligned-100": 100.0,
    "calibration-refusal-100": 100.0,
    "calibration-one-refusal-50": 50.0,
}
CALIBRATION_OWNER = "val-bench"
CALIBRATION_SPLIT = "train"


class HubError(Exception):
    """The hub dataset cannot be had; the message names it and what to do."""


def hub_cache() -> Path:
    return cache_dir() / "hub"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def in_split(name: str, split: str) -> bool:
    """Hub Parquet layouts: `data/{split}-00000-of-00001.parquet` or `{split}/0000.parquet`."""
    return name.endswith(".parquet") and (
        Path(name).name.startswith(f"{split}-") or f"/{split}/" in f"/{name}"
    )


def snapshot(repo: str, split: str) -> list[tuple[str, Path]]:
    """(name in the repo, local path) of the split's Parquet files, downloading what is missing."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(
            f"loading hf:{repo} needs the hf extra: pip install 'valbench-evaluator[hf]'"
        ) from None
    try:
        folder = Path(
            snapshot_download(
                repo,
                repo_type="dataset",
                # fnmatch patterns (`*` crosses `/`); in_split() picks the exact files below.
                allow_patterns=[f"*{split}-*.parquet", f"*{split}/*.parquet"],
                cache_dir=str(hub_cache()),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                local_files_only=_truthy("HF_HUB_OFFLINE"),
            )
        )
    except Exception as exc:  # network, auth, not-found and offline errors come in many types
        raise HubError(
            f"cannot get hub dataset {repo} (split {split}): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} — where there is "
            f"no internet access, run `python -m evaluator fetch` first on a machine that has "
            f"it (cache: {hub_cache()})"
        ) from None
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet") if p.is_file())
    wanted = [f for f in files if in_split(f, split)]
    if not wanted:
        raise HubError(f"hub dataset {repo} has no Parquet files for split {split!r}")
    return [(name, folder / name) for name in wanted]


def calibration_repo(name: str) -> str:
    return f"{CALIBRATION_OWNER}/{name}"
