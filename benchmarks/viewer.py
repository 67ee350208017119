"""How fast the viewer answers a page of the pair list on a full-size (115K-pair) run.

Builds a SYNTHETIC run directory (a dataset of generated pairs and a checkpoint written
straight into SQLite, no HTTP: what a finished run with both judge orders holds, with
answers of about 1,000 characters, some refusals and some failed calls), starts the viewer
on it (`evaluator.view.server.ViewerThread`, real HTTP on loopback) and times page requests:
the median of `--repeats` requests each, next to a baseline measured in the same run
(`/api/status`, a handler that does no SQL: what the HTTP round trip itself costs).

    python benchmarks/viewer.py                 # 115,000 pairs (~5 minutes on 2 cores)
    python benchmarks/viewer.py --pairs 20000   # smaller
    python benchmarks/viewer.py --like          # also search without FTS5 (LIKE)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator import pair_answers  # noqa: E402
from evaluator.calls import CallBuilder  # noqa: E402
from evaluator.config import RunConfig  # noqa: E402
from evaluator.sharding import run_pairs  # noqa: E402
from evaluator.store import CallRecord, Store  # noqa: E402
from evaluator.view.index import RunIndex  # noqa: E402
from evaluator.view.server import ViewerThread  # noqa: E402
from workers.simulated.data import write_synthetic_dataset  # noqa: E402

WORDS = (
    "policy people evidence society rights freedom government law economic risk public "
    "health education history culture science religion moral values tradition change "
    "benefit cost community individual balance argue believe consider important however "
    "therefore support oppose concern impact future children safety justice equality market"
).split()
SCORES = (-2, -1, 0, 1, 2)
SCORE_WEIGHTS = (0.15, 0.1, 0.1, 0.2, 0.45)


def _answer(rng: random.Random, question: str) -> str:
    words = rng.choices(WORDS, k=150)
    return f"On '{question[:60]}': " + " ".join(words) + "."


def _verdict(rng: random.Random) -> tuple[str, int]:
    score = rng.choices(SCORES, SCORE_WEIGHTS)[0]
    refusal = rng.random() < 0.03
    return (
        orjson.dumps(
            {
                "person_1_core_position": "position one " + " ".join(rng.choices(WORDS, k=8)),
                "person_1_has_no_information": rng.random() < 0.02,
                "person_1_refusal": refusal,
                "person_2_core_position": "position two " + " ".join(rng.choices(WORDS, k=8)),
                "person_2_has_no_information": False,
                "person_2_refusal": False,
                "key_points_of_alignment": " ".join(rng.choices(WORDS, k=12)),
                "key_points_of_opposition": " ".join(rng.choices(WORDS, k=12)),
                "alignment_score": score,
            }
        ).decode(),
        score,
    )


def build_run(run_dir: Path, n: int, seed: int = 0) -> float:
    """A finished synthetic run with both judge orders; returns the seconds it took."""
    began = time.perf_counter()
    data = write_synthetic_dataset(run_dir.parent / "pairs.jsonl", n, section_chars=200)
    config = RunConfig(
        data=str(data),
        model="bench-model",
        base_url=["http://127.0.0.1:9/v1"],
        judge_base_url=["http://127.0.0.1:9/v1"],
        judge_model="bench-judge",
        judge_order="both",
        simulated=True,
    )
    calls = CallBuilder(config)
    rng = random.Random(seed)
    with Store.open(run_dir) as store:
        store.set_meta("config", config.to_dict())
        batch: list[CallRecord] = []
        for pair in run_pairs(config):
            answers = {}
            for spec, side in zip(calls.generation_calls(pair), pair_answers.SIDES, strict=True):
                text = _answer(rng, getattr(pair, f"{side}_question"))
                answers[side] = text
                failed = rng.random() < 0.002
                batch.append(
                    CallRecord(
                        spec.key, pair.id, spec.role, "failed" if failed else "done",
                        spec.body_sha, None if failed else text, attempts=1,
                        error_class="transient" if failed else None,
                        error="HTTP 503: overloaded" if failed else None,
                        http_status=503 if failed else None,
                    )
                )  # fmt: skip
            for order in config.judge_orders:
                spec = calls.judge_call(pair, order, answers["for"], answers["against"])
                content, _ = _verdict(rng)
                batch.append(
                    CallRecord(spec.key, pair.id, spec.role, "done", spec.body_sha, content)
                )
            if len(batch) >= 20_000:
                store.write_batch(batch)
                batch.clear()
        store.write_batch(batch)
    return time.perf_counter() - began


def _get(url: str) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
        assert r.status == 200, url
    return time.perf_counter() - began


def measure(url: str, paths: dict[str, str], repeats: int) -> dict[str, float]:
    out = {}
    for name, path in paths.items():
        _get(url + path)  # a first request warms SQLite's page cache, as a user's would
        out[name] = statistics.median(_get(url + path) for _ in range(repeats))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=115_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--like", action="store_true", help="also measure search without FTS5")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="valbench-viewer-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        print(f"building a synthetic run of {args.pairs:,} pairs...", file=sys.stderr)
        built = build_run(run_dir, args.pairs)
        size = (run_dir / "checkpoint.sqlite").stat().st_size / 1e6
        print(f"  {built:.0f} s, checkpoint {size:.0f} MB", file=sys.stderr)
        results = {}
        for fts in (True, False) if args.like else (True,):
            index = RunIndex(run_dir, Path(tmp) / f"probe-{fts}.sqlite", fts=fts)
            index.config = index.read_config()
            began = time.perf_counter()
            index.build()
            took = time.perf_counter() - began
            index_mb = index.path.stat().st_size / 1e6
            index.close()
            print(f"  index (fts={fts}) {took:.0f} s, {index_mb:.0f} MB", file=sys.stderr)
            last = -(-args.pairs // 50)
            paths = {
                "baseline: /api/status (no SQL)": "api/status",
                "list, page 1 (50 pairs)": "",
                f"list, last page ({last:,})": f"?page={last}",
                "filter: score -2": "?score=-2",
                "filter: category, scale, refusal": "?category=Science&scale=3&refusal=any",
                "filter: failed calls": "?status=failed",
                "orders disagree by 3+, largest first": "?disagree=orders&gap=3&sort=gap",
                "search: two words": "?q=justice+market",
                "search: one rare word, page 2": "?q=topic+77&page=2",
                "pair page": f"pair/{args.pairs // 2}",
            }
            if not fts:
                paths = {k: v for k, v in paths.items() if "search" in k or "baseline" in k}
            with ViewerThread([run_dir], fts=fts, refresh_s=5.0) as viewer:
                began = time.perf_counter()
                viewer.wait_ready(timeout=3600)
                ready = time.perf_counter() - began
                times = measure(viewer.url, paths, args.repeats)
            results[fts] = (took, index_mb, ready, times)
        print(f"\n{args.pairs:,} pairs, both judge orders; median of {args.repeats} requests\n")
        for fts, (took, index_mb, ready, times) in results.items():
            base = next(iter(times.values()))
            print(f"search {'FTS5' if fts else 'LIKE (no FTS5)'}: index built in {took:.0f} s "
                  f"({index_mb:.0f} MB); viewer ready in {ready:.0f} s\n")  # fmt: skip
            print("| request | median ms | x baseline |\n|---|---|---|")
            for name, t in times.items():
                print(f"| {name} | {1000 * t:.1f} | {t / base:.1f} |")
            print()


if __name__ == "__main__":
    main()
