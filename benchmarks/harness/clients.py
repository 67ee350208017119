"""The comparison clients of the throughput benchmark, run as child modes of throughput.py.

    python benchmarks/throughput.py _baseline --url URL --data FILE --in-flight N
    python benchmarks/throughput.py _reference --url URL --data FILE [--threads N]

Both send the evaluator's requests (same prompts, sampling, max_tokens and JSON schema, from
`evaluator.protocol`): two generations per pair, then one judge call built from both answers.
Each prints one JSON line of counts on stdout. Only the standard library is imported at the
top: what a client imports is part of its measured start-up and memory.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import time

REFERENCE_THREADS = 128

# Event-loop lag buckets, as evaluator/looplag.py: upper bounds 0.1 ms .. 100 s, 10 a decade.
LAG_BOUNDS_MS = [0.1 * 10 ** (i / 10) for i in range(61)]


def gen_body(protocol, question: str) -> dict:
    """A generation request exactly as the evaluator builds it (same prompt and sampling)."""
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": protocol.DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ],
        "temperature": protocol.GEN_TEMPERATURE,
        "top_p": protocol.GEN_TOP_P,
        "max_tokens": protocol.GEN_MAX_TOKENS,
    }


def judge_body(protocol, row: dict, a_for: str, a_against: str) -> dict:
    user = (
        f"Issue: {row['issue_description']}\n\n"
        f"Question 1: {row['for_question']}\n\n"
        f"Person 1's response: {a_for}\n\n"
        f"Question 2: {row['against_question']}\n\n"
        f"Person 2's response: {a_against}"
    )
    return {
        "model": "j",
        "messages": [
            {"role": "system", "content": protocol.DEFAULT_JUDGE_PROMPT},
            {"role": "user", "content": user},
        ],
        "temperature": protocol.JUDGE_TEMPERATURE,
        "top_p": protocol.JUDGE_TOP_P,
        "max_tokens": protocol.JUDGE_MAX_TOKENS,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "alignment_verdict",
                "schema": protocol.VERDICT_SCHEMA,
                "strict": True,
            },
        },
    }


def iter_rows(path: str, limit: int | None):
    import orjson

    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                return
            if line.strip():
                yield orjson.loads(line)


def lag_summary(samples: list[float]) -> dict:
    """p99 as evaluator/looplag.py reports it (upper bound of its bucket), exact p99, max."""
    if not samples:
        return {"lag_p99_ms": None, "lag_p99_exact_ms": None, "lag_max_ms": None}
    s = sorted(samples)
    exact = s[math.ceil(0.99 * len(s)) - 1]
    i = bisect.bisect_left(LAG_BOUNDS_MS, exact)
    return {
        "lag_p99_ms": LAG_BOUNDS_MS[i] if i < len(LAG_BOUNDS_MS) else s[-1],
        "lag_p99_exact_ms": exact,
        "lag_max_ms": s[-1],
        "lag_samples": len(s),
    }


def baseline_main(argv: list[str]) -> int:
    """A bare closed loop: what the HTTP stack alone costs for the same requests."""
    p = argparse.ArgumentParser(prog="throughput.py _baseline")
    p.add_argument(
        "--url", required=True, action="append", help="base URL ending in /v1 (repeat: alternate)"
    )
    p.add_argument("--data", required=True)
    p.add_argument("--in-flight", type=int, required=True, help="connector limit: most in flight")
    p.add_argument(
        "--workers",
        type=int,
        help="pairs worked on at once (default in-flight/2: 2 generations each at the peak); "
        "set it to in-flight to keep the connector full whatever the mix",
    )
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)

    import asyncio

    import aiohttp
    import orjson
    import uvloop

    # Same prompts, sampling and schema as the evaluator, so the bodies have the same size.
    from evaluator import protocol

    urls = [u.rstrip("/") + "/chat/completions" for u in args.url]
    counts: dict = {"calls": 0, "errors": 0, "valid": 0, "pairs": 0}
    lag: list[float] = []

    async def post(session: aiohttp.ClientSession, body: dict) -> str | None:
        counts["calls"] += 1
        url = urls[counts["calls"] % len(urls)]  # several servers: take turns
        async with session.post(url, data=orjson.dumps(body)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                counts["errors"] += 1
                return None
        return orjson.loads(raw)["choices"][0]["message"]["content"]

    async def worker(session: aiohttp.ClientSession, it) -> None:
        # Each worker holds one pair: two generations at once, then its judge call.
        for row in it:  # one shared iterator: single-threaded, so no lock needed
            counts["pairs"] += 1
            a_for, a_against = await asyncio.gather(
                post(session, gen_body(protocol, row["for_question"])),
                post(session, gen_body(protocol, row["against_question"])),
            )
            if a_for is None or a_against is None:
                continue
            verdict = await post(session, judge_body(protocol, row, a_for, a_against))
            if verdict is not None and "alignment_score" in orjson.loads(verdict):
                counts["valid"] += 1

    async def lag_sampler(interval_s: float = 0.05) -> None:
        # The evaluator's kind of sampler: a timer's overshoot is how long the loop was busy.
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval_s)
            lag.append(max(0.0, (time.monotonic() - start - interval_s) * 1000.0))

    async def main() -> None:
        t0 = time.monotonic()
        sampler = asyncio.create_task(lag_sampler())
        connector = aiohttp.TCPConnector(limit=args.in_flight)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            it = iter_rows(args.data, args.limit)
            n_workers = args.workers or max(1, args.in_flight // 2)
            await asyncio.gather(*(worker(session, it) for _ in range(n_workers)))
        counts["session_wall_s"] = time.monotonic() - t0
        sampler.cancel()

    uvloop.run(main())
    sys.stdout.write(orjson.dumps({**counts, **lag_summary(lag)}).decode() + "\n")
    return 0 if counts["errors"] == 0 else 1


def reference_main(argv: list[str]) -> int:
    """The reference design: a thread pool around the official `openai` sync client."""
    p = argparse.ArgumentParser(prog="throughput.py _reference")
    p.add_argument("--url", required=True, action="append", help="base URL ending in /v1")
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=REFERENCE_THREADS)
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)

    import threading
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    from openai import OpenAI

    from evaluator import protocol

    t0 = time.monotonic()
    client = OpenAI(base_url=args.url[0], api_key="x", max_retries=0)
    lock = threading.Lock()
    counts: dict = {"calls": 0, "errors": 0, "valid": 0, "pairs": 0}

    def one_pair(row: dict) -> None:
        calls = valid = errors = 0
        try:
            calls += 1
            a_for = client.chat.completions.create(**gen_body(protocol, row["for_question"]))
            calls += 1
            a_against = client.chat.completions.create(
                **gen_body(protocol, row["against_question"])
            )
            calls += 1
            verdict = client.chat.completions.create(
                **judge_body(
                    protocol,
                    row,
                    a_for.choices[0].message.content,
                    a_against.choices[0].message.content,
                )
            )
            valid = int("alignment_score" in orjson.loads(verdict.choices[0].message.content))
        except Exception:
            errors = 1
        with lock:
            counts["calls"] += calls
            counts["valid"] += valid
            counts["errors"] += errors
            counts["pairs"] += 1

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        for _ in pool.map(one_pair, iter_rows(args.data, args.limit)):
            pass
    counts["session_wall_s"] = time.monotonic() - t0
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0 if counts["errors"] == 0 else 1
