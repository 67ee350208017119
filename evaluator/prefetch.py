"""`fetch`: download ahead of time what runs need, into valbench's cache, so that compute
nodes without internet access run from the cache.

What: the paper's judge prompt (evaluator.paper_prompt), a hub dataset's split (by default
`hf:val-bench/VAL-Bench`, split test) and the authors' four calibration sets (split
train), the last two through evaluator.hub. With the cache on shared storage (or copied),
point VALBENCH_CACHE_DIR at it on the compute nodes; HF_HUB_OFFLINE=1 there makes the
hub reads skip the network at once instead of falling back after a failed attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluator import hub, paper_prompt

PARTS = ("paper", "dataset", "calibration")


@dataclass(frozen=True, slots=True)
class Fetched:
    what: str
    ok: bool
    detail: str  # where it is cached, or why it failed


def fetch(
    parts: tuple[str, ...] = PARTS, data: str = "hf:val-bench/VAL-Bench", split: str = "test"
) -> list[Fetched]:
    """Fetch each part asked for; one failure does not stop the others."""
    out: list[Fetched] = []
    if "paper" in parts:
        pin = paper_prompt.PAPER
        try:
            path = paper_prompt.fetch()
            out.append(Fetched(f"paper judge prompt ({pin.describe()})", True, str(path)))
        except paper_prompt.PaperPromptError as exc:
            out.append(Fetched(f"paper judge prompt ({pin.describe()})", False, str(exc)))
    targets: list[tuple[str, str]] = []
    if "dataset" in parts:
        if not data.startswith("hf:"):
            out.append(Fetched(f"dataset {data}", False, "not a hub dataset (hf:owner/name)"))
        else:
            targets.append((data[3:], split))
    if "calibration" in parts:
        targets += [(hub.calibration_repo(n), hub.CALIBRATION_SPLIT) for n in hub.CALIBRATION_SETS]
    for repo, repo_split in targets:
        what = f"hf:{repo} (split {repo_split})"
        try:
            files = hub.snapshot(repo, repo_split)
        except hub.HubError as exc:
            out.append(Fetched(what, False, str(exc)))
            continue
        out.append(Fetched(what, True, f"{len(files)} Parquet file(s) in {files[0][1].parent}"))
    return out
