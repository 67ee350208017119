"""Live progress: tqdm bars on a terminal, plain log lines in batch jobs, nothing with --quiet.

It reads the scheduler's counters a few times a second from its own task, so
its cost does not grow with the call rate.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from workers.base import cancel_and_wait

if TYPE_CHECKING:
    from evaluator.costs import CostMeter
    from evaluator.scheduler import RunStats

log = logging.getLogger("evaluator")


def _eta(remaining: float, rate: float) -> str:
    if rate <= 0 or remaining <= 0:
        return "?" if remaining > 0 else "0s"
    seconds = int(remaining / rate)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Per stage done/total, calls/s, tokens/s, errors, ETA and cost so far."""

    def __init__(
        self,
        stats: RunStats,
        expected_pairs: int | None,
        judge_orders: int,
        *,
        mode: str,
        interval_s: float,
        stream: TextIO = sys.stderr,
        cost: CostMeter | None = None,
    ) -> None:
        self.stats = stats
        self.cost = cost
        self.expected = expected_pairs
        self.orders = judge_orders
        self.mode = mode  # "bar" | "log"
        self.interval_s = interval_s
        self.stream = stream
        self._task: asyncio.Task[None] | None = None
        self._bars: dict[str, tqdm] = {}

    @classmethod
    def choose_mode(cls, stream: TextIO = sys.stderr) -> str:
        return "bar" if stream.isatty() else "log"

    def start(self) -> None:
        if self.mode == "bar":
            # tqdm's own monitor thread is not needed (this task refreshes the bars) and
            # competes with the event loop for the GIL.
            tqdm.monitor_interval = 0
            for position, (stage, label, per_pair) in enumerate(
                (("gen", "generation", 2), ("judge", "judge", self.orders))
            ):
                total = self.expected * per_pair if self.expected is not None else None
                self._bars[stage] = tqdm(
                    total=total,
                    desc=f"{label:>10}",
                    unit="call",
                    position=position,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                    smoothing=0.1,
                )
        self._task = asyncio.create_task(self._run(), name="progress")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._update()
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    async def _run(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(0.5 if self.mode == "bar" else min(self.interval_s, 1.0))
            if self.mode == "bar":
                self._update()
            elif time.monotonic() - last_log >= self.interval_s:
                last_log = time.monotonic()
                log.info("progress: %s", self.line())

    def _update(self) -> None:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        for stage, bar in self._bars.items():
            bar.n = s.done[stage] + s.failed[stage]
            bar.set_postfix_str(
                f"failed {s.failed[stage]}, {(s.tokens_in + s.tokens_out) / elapsed:,.0f} tok/s, "
                f"{self._cost_text()}",
                refresh=False,
            )
            bar.refresh()

    def line(self) -> str:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        rate = s.pairs_finished / elapsed
        if self.expected is not None:
            remaining = max(0, self.expected - s.pairs_finished)
            pairs = f"{s.pairs_finished}/{self.expected} pairs"
            eta = _eta(remaining, rate)
        else:
            pairs, eta = f"{s.pairs_finished} pairs", "?"
        return (
            f"{pairs} ({s.pairs_failed} failed), generation {s.done['gen']} done "
            f"{s.failed['gen']} failed, judge {s.done['judge']} done {s.failed['judge']} failed, "
            f"{s.calls_sent / elapsed:.1f} calls/s, "
            f"{(s.tokens_in + s.tokens_out) / elapsed:,.0f} tokens/s, "
            f"cost {self._cost_text()}, ETA {eta}"
        )

    def _cost_text(self) -> str:
        """Session cost; with a meter, the run's total, its projection and the budget too."""
        from evaluator.costs import expected_calls

        text = f"${self.stats.cost_usd:,.4f}"
        c = self.cost
        if c is None:
            return text
        text += f" (run ${c.spent:,.4f}"
        projected = c.projected(expected_calls(self.expected, self.orders))
        if projected is not None:
            text += f", projected ${projected:,.4f}"
        if c.limit is not None:
            text += f", budget ${c.limit:,.2f}"
        return text + ")"
