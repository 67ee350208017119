"""Does routing by prompt prefix help? Least-outstanding vs prefix-affinity routing on two
SIMULATED GPUs with prefix caching.

    python benchmarks/prefix_routing.py               # 3 repeats each (~3 min)
    python benchmarks/prefix_routing.py --repeats 1

Every call of a stage starts with the same long prefix: the generation system prompt,
or the judge rubric (~485 tokens of a ~750-token judge prompt). vLLM's prefix cache
keeps such a prefix once computed, so routing a stage's calls to the server that
already holds its prefix could save prefill work. This measures whether it matters.

Two simulated servers (`python -m workers.simulated --batching`, prefix caching on, a
small KV cache so that idle prefixes can be evicted, prefill priced high so that it
shows) serve both stages as one pool. The evaluator runs with default settings, and:

- `least-outstanding`: the pool's routing (workers/pool.py), each call to the endpoint
  with the fewest calls in flight for its limit;
- `prefix-affinity`: each stage prefers one server (rendezvous hashing of the stage,
  i.e. of its prefix, over the servers) while that server holds at most 1.25x the
  pool's mean load, else least-outstanding (consistent hashing with bounded loads).
  Defined here only, patched into the evaluator of the child process: it is not part of
  the product unless these figures say it should be.

Measured per run: session calls/s (the same calls every time, so its inverse is the
time the whole job took), the servers' prefix-cache hit rate (hit tokens / queried
tokens, vLLM's `prefix_cache_hits` / `prefix_cache_queries`) and the same over the
shared prefixes' tokens only (the most any routing could reach is 100%), the prefix
tokens computed again, and the prompt tokens prefilled per call (what the cache did
not save). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's benchmarks/, evaluator/ and workers/

from benchmarks.harness.children import Children, child_env  # noqa: E402
from benchmarks.harness.servers import spawn_server  # noqa: E402
from benchmarks.harness.tables import table  # noqa: E402

SERVER = (
    "--batching", "--max-num-seqs", "256", "--kv-cache-tokens", "15000", "--step-ms", "12",
    "--seq-ms", "0.25", "--prefill-token-ms", "0.05", "--output-tokens", "48",
    "--judge-output-tokens", "24", "--output-sigma", "0.5",
    "--served-model-name", "m", "--served-model-name", "j",
)  # fmt: skip
PAIRS = 300
ROUTINGS = ("least-outstanding", "prefix-affinity")


def _affinity_best(self):  # an EndpointPool method, patched in by `_run`
    """The stage's preferred server while its load stays within 1.25x the pool's mean."""
    live = [ep for ep in self.endpoints if ep.available]
    if not live:
        return None

    def rank(ep) -> str:  # rendezvous hashing: the stage's name stands for its prefix
        return hashlib.sha256(f"{self.config.name}\0{ep.name}".encode()).hexdigest()

    preferred = max(live, key=rank)
    inflight = sum(ep.concurrency.inflight for ep in self.endpoints)
    bound = 1.25 * (inflight + 1) / len(self.endpoints)
    if preferred.concurrency.inflight + 1 <= bound:
        return preferred
    return min(live, key=lambda ep: ep.load())


def child(argv: list[str]) -> int:
    """`prefix_routing.py _run ROUTING -- EVALUATOR ARGS`: the evaluator with that routing."""
    routing, rest = argv[0], argv[2:]
    if routing == "prefix-affinity":
        from workers.pool import EndpointPool

        EndpointPool._best = _affinity_best
    from evaluator.cli import main as evaluator_main

    return evaluator_main(rest)


def one_run(routing: str, data: Path, work: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(dir=work))
    with Children() as children:  # the servers stopped on every path
        servers = [spawn_server(children, tmp, f"sim-{i}", SERVER) for i in range(2)]
        cmd = [
            sys.executable, __file__, "_run", routing, "--", "run", "--data", str(data),
            "--model", "m", "--judge-model", "j", "--out", str(tmp / "out"), "--quiet",
            # Our rubric (its ~485 tokens are the judge prefix measured here): the paper's
            # prompt is downloaded, and benchmarks run offline.
            "--judge-prompt", "builtin",
        ]  # fmt: skip
        for server in servers:
            cmd += ["--base-url", server.url]
        done = subprocess.run(
            cmd, cwd=tmp, env=child_env(), capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            raise RuntimeError(f"evaluator exited {done.returncode}: {done.stderr[-2000:]}")
        gpus = [server.stats()["gpu"] for server in servers]
    session = orjson.loads((tmp / "out" / "summary.json").read_bytes())["last_session"]
    shutil.rmtree(tmp, ignore_errors=True)
    queries = sum(g["prefix_cache_queries"] for g in gpus)
    hits = sum(g["prefix_cache_hits"] for g in gpus)
    requests = sum(g["requests"] for g in gpus)
    shared = sum(g["shared_prefix_tokens"] for g in gpus)
    return {
        "calls_per_s": session["calls_sent"] / session["wall_s"],
        "hit_rate": hits / queries,
        "prefix_hit_rate": hits / shared,
        "prefix_misses": shared - hits,
        "prefilled_per_call": (queries - hits) / requests,
        "requests_per_server": [g["requests"] for g in gpus],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefix_routing.py", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from workers.simulated.data import write_synthetic_dataset

    started = time.time()
    load = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {r: [] for r in ROUTINGS}
    with tempfile.TemporaryDirectory(prefix="prefix-routing-") as work:
        data = write_synthetic_dataset(Path(work) / "pairs.jsonl", PAIRS)
        for i in range(args.repeats):
            for routing in ROUTINGS if i % 2 == 0 else ROUTINGS[::-1]:
                run = one_run(routing, data, Path(work))
                print(f"  {routing:>18}: {run}", file=sys.stderr, flush=True)
                runs[routing].append(run)
    rows = [
        [
            routing,
            f"{statistics.median(r['calls_per_s'] for r in rs):.1f}",
            f"{statistics.median(r['hit_rate'] for r in rs):.2%}",
            f"{statistics.median(r['prefix_hit_rate'] for r in rs):.2%}",
            f"{statistics.median(r['prefix_misses'] for r in rs):,.0f}",
            f"{statistics.median(r['prefilled_per_call'] for r in rs):.1f}",
            " / ".join(str(n) for n in rs[0]["requests_per_server"]),
        ]
        for routing, rs in runs.items()
    ]
    lines = [
        f"{PAIRS} pairs ({3 * PAIRS} calls), 2 simulated servers, median of {args.repeats}; "
        f"{time.time() - started:.0f} s, load average {load:.2f} at the start",
        "",
        *table(
            [
                "routing",
                "session calls/s",
                "prefix-cache hit rate (all prompt tokens)",
                "of the shared prefixes' tokens",
                "prefix tokens prefilled again",
                "prompt tokens prefilled per call",
                "calls per server (a run)",
            ],
            ["---", "---:", "---:", "---:", "---:", "---:", "---"],
            rows,
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
