"""`demo`: the bundled sample through the simulated backend, over loopback HTTP."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from evaluator.cli.common import finish, options, run_loop
from evaluator.config import RunConfig
from evaluator.dataset import DatasetError, iter_pairs
from evaluator.run import RunResult, UserError, execute
from evaluator.store import DB_NAME, Store, StoreError


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.simulated import SimConfig, SimulatedServer, sides_from_pairs

    out: Path = args.out
    if not args.resume and (out / DB_NAME).exists():
        try:
            with Store.open(out, create=False, readonly=True) as store:
                stored = store.get_meta("config") or {}
        except StoreError as exc:
            raise UserError(str(exc)) from None
        if not stored.get("simulated"):
            raise UserError(
                f"{out} holds a real run; the demo will not overwrite it (use another --out)"
            )
        shutil.rmtree(out)  # a previous demo: start afresh
    try:
        sides = sides_from_pairs(iter_pairs(args.data, limit=args.limit))
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    sim = SimConfig(
        persona=args.persona,
        share=args.share,
        latency_median_ms=args.latency_ms,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        malformed_rate=args.malformed_rate,
        reasoning=args.reasoning,
        sides=sides,
    )

    model = f"simulated-{args.persona}"
    sim.served_names = (model, "simulated-judge")  # strict, like a real server

    async def go() -> RunResult:
        server = SimulatedServer(sim)
        url = await server.start()
        try:
            config = RunConfig(
                data=args.data,
                limit=args.limit,
                model=model,
                base_url=url,
                judge_model="simulated-judge",
                judge_base_url=url,
                judge_order=args.judge_order,
                concurrency=16,
                judge_concurrency=16,
                simulated=True,
                # Simulated errors should not make the demo wait long.
                max_attempts=8,
                backoff_base_s=0.05,
            )
            return await execute(out, config, resume=args.resume, options=options(args))
        finally:
            await server.stop()

    print(
        f"SIMULATION: running the bundled sample against the simulated backend "
        f"(persona {args.persona}), over HTTP on 127.0.0.1",
        file=sys.stderr,
    )
    return finish(run_loop(go()), print_report=True)
