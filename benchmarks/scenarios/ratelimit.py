"""Scenario 3, a server enforcing 6,000 req/min: achieved rate and share of 429s.

Two variants: the evaluator learning the limit from the x-ratelimit headers, and given
--rpm/--tpm.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.measure import Bench
from ..harness.report import log
from ..harness.servers import Poller, answered, rate_limited, start_server
from ..harness.tables import Section, f0, f1, f3, med, table

RL_RPM, RL_TPM, RL_C = 6000.0, 30_000_000.0, 64


def scenario_ratelimit(bench: Bench, args: argparse.Namespace, tmp: Path) -> Section:
    n = 350 if args.quick else 1100
    rps = RL_RPM / 60.0
    sec = Section(
        f"3. Rate-limited server: {RL_RPM:g} req/min, {RL_TPM:g} tokens/min, 1-second windows "
        f"({n} pairs, {3 * n} calls ≈ {3 * n / rps:.0f} s at the limit; median of {args.repeats})"
    )
    results = _measure(bench, args, tmp, n)
    _write(sec, results, n)
    return sec


def _measure(bench: Bench, args: argparse.Namespace, tmp: Path, n: int) -> dict[str, list[dict]]:
    """args.repeats runs of each variant, alternating, each against a fresh server."""
    from workers.simulated.data import write_synthetic_dataset

    rps = RL_RPM / 60.0
    data = write_synthetic_dataset(tmp / "ratelimit.jsonl", n)
    # The simulated server has one allowance for every model name; the evaluator keeps a
    # rate bucket per (URL, key, model), so both stages name one model to share one bucket.
    same = ("--judge-model", "m")
    variants = (
        ("learns from headers (no limits given)", same),
        (
            f"--rpm {RL_RPM:g} --tpm {RL_TPM:g} given",
            (*same, "--rpm", f"{RL_RPM:g}", "--tpm", f"{RL_TPM:g}"),
        ),
    )
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for i in range(args.repeats):
        for name, extra in variants if i % 2 == 0 else variants[::-1]:
            # A fresh server per run: its buckets start full and its counts at zero.
            server = start_server(bench.children, tmp, data, f"rl-{i}", rpm=RL_RPM, tpm=RL_TPM)
            poller = Poller([server], interval_s=0.5)
            try:
                m = bench.evaluator(
                    [server], data, n, RL_C, extra=extra, strict=False, on_tick=poller.tick
                )
                st = server.stats()
            finally:
                bench.children.stop(server.proc)
            m["accepted"] = answered(st)
            m["r429"] = rate_limited(st)
            # 429s in the first seconds (before the evaluator can know the limit) and after.
            t_first = poller.t_at(1, 0.0)
            early = [v for t, v in poller.rejected if t <= t_first + 2.0]
            m["r429_early"] = early[-1] if early else 0
            m["requests_total"] = int(st["requests_total"])
            m["achieved_rpm"] = m["accepted"] / m["session_wall_s"] * 60.0
            # The server's request bucket starts full (one second's worth): without that bonus
            # at most rps x session seconds can be answered.
            m["achieved_share"] = (m["accepted"] - rps) / (rps * m["session_wall_s"])
            m["steady_share"] = poller.steady(m["accepted"]) / rps
            m["share_429"] = m["r429"] / max(1, m["requests_total"])
            eps = m["session"].get("endpoints", {})
            m["conc"] = "/".join(
                f0(e[0].get("concurrency_limit")) if e else "?"
                for e in (eps.get("generation", []), eps.get("judge", []))
            )
            results[name].append(m)
            log(
                f"rate limit run {i + 1} ({name}): {m['session_wall_s']:.1f} s, "
                f"{m['achieved_rpm']:.0f} req/min, {m['achieved_share']:.1%} of allowed "
                f"(initial bucket left out), {m['steady_share']:.1%} steady, "
                f"{m['r429']} 429s ({m['share_429']:.2%}), n_valid {m['n_valid']}/{n}"
            )
    return results


def _write(sec: Section, results: dict[str, list[dict]], n: int) -> None:
    """One row and two targets per variant, then the notes."""
    rps = RL_RPM / 60.0
    rows = []
    for name, rs in results.items():
        ratio = med(r["achieved_share"] for r in rs)
        share = med(r["share_429"] for r in rs)
        wall = med(r["session_wall_s"] for r in rs)
        valid = min(r["n_valid"] for r in rs)
        rows.append(
            [
                name,
                f1(wall),
                f0(med(r["accepted"] for r in rs)),
                f0(med(r["r429"] for r in rs)),
                f0(med(r["r429"] - r["r429_early"] for r in rs)),
                f"{100 * share:.2f}%",
                f0(med(r["achieved_rpm"] for r in rs)),
                f"{100 * ratio:.1f}%",
                f"{100 * med(r['steady_share'] for r in rs):.1f}%",
                ", ".join(r["conc"] for r in rs),
                f"{valid}/{n}",
                f3(1000 * med(r["cpu_s"] for r in rs) / (3 * n)),
                f1(med(r["rss_mib"] for r in rs)),
            ]
        )
        sec.target(
            f"rate limit, {name}: achieved ≥ 90% of allowed over ≥ 30 s",
            f"{100 * ratio:.1f}% over {wall:.0f} s",
            ratio >= 0.9 and wall >= 30,
        )
        sec.target(f"rate limit, {name}: 429 share < 1%", f"{100 * share:.2f}%", share < 0.01)
    sec.lines += table(
        [
            "evaluator",
            "session s",
            "answered",
            "429s",
            "429s after the first 2 s",
            "429 share",
            "answered per min",
            "achieved ÷ allowed (whole run)",
            "achieved ÷ allowed (steady 10%→90%)",
            "final concurrency gen/judge (per run)",
            "valid pairs (worst run)",
            "client CPU ms/call",
            "peak RSS MiB",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:"]
        + ["---:", "---:"],
        rows,
    )
    sec.lines += [
        "",
        f"Answered per min = requests the server answered 200 ÷ the evaluator's session time × "
        f"60. The server's request bucket starts full (one second's worth, {rps:.0f} requests), "
        f"so achieved ÷ allowed (whole run) = (answered − {rps:.0f}) ÷ ({rps:.0f}/s × session "
        "s), start and tail included; the steady figure is the slope of the answered count "
        "(polled every 0.5 s) between 10% and 90% of the calls. '429s after the first 2 s': "
        "counted from 2 s after the first answer (the poll nearest it), i.e. after the "
        "evaluator has seen the limit in the x-ratelimit headers. 429 share = 429 answers ÷ all "
        "requests the server got. The same server serves generations and judge calls; with "
        "--rpm/--tpm given the evaluator's two stages share one bucket (same URL, key and model: "
        "both stages name one model here, as the server has one allowance for all). "
        "Requests are ≈ 4,170 tokens (generation) and ≈ 2,990 (judge) as the server counts "
        f"them (body bytes ÷ 4 + max_tokens), so {rps:.0f} req/s is ≈ 0.38 M tokens/s of the "
        f"{RL_TPM / 60e6:.1f} M/s allowed: the request limit binds.",
    ]
