"""Live progress: tqdm bars on a terminal, plain log lines in batch jobs, nothing with --quiet.

It reads the scheduler's counters a few times a second from its own task, so
its cost does not grow with the call rate.

What it shows is the run's, not only this session's: after a resume the bars
start at the calls already recorded, and the ETA divides the work left by this
session's own rate (pairs found complete in the checkpoint cost no time and
are not counted in that rate). While bars are shown, log records (warnings,
the Ctrl-C message) go through tqdm, so they print above the bars instead of
through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from workers.base import cancel_and_wait

if TYPE_CHECKING:
    from evaluator.costs import CostMeter
    from evaluator.run.outcomes import RunStats

log = logging.getLogger("evaluator")

# Fits 80 columns with room for the bar: "generation  42%|####    | 96521/230000 [01:02<01:24, fail 3]"
BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


@dataclass
class Activity:
    """What the endpoints are doing besides answering: retries and rate-limit waits."""

    retries: int = 0  # attempts sent again (errors and rate limits)
    rate_limited: int = 0  # 429 answers
    waiting_s: float = 0.0  # the longest pause an endpoint is in now (Retry-After)
    # Server-aware concurrency (None: no endpoint follows its server): the stages' limits
    # summed over their endpoints ("gen", "judge"), and the servers' own figures summed
    # over distinct servers (requests running and waiting) with the fullest KV cache.
    limits: dict[str, int] | None = None
    server_running: float = 0.0
    server_waiting: float = 0.0
    server_kv: float | None = None

    def server_text(self) -> str:
        """'limit 512+128 · server 480 run 6 wait KV 71%', or '' when nothing follows a server."""
        if self.limits is None:
            return ""
        limits = "+".join(str(v) for v in self.limits.values())
        kv = f" KV {self.server_kv:.0%}" if self.server_kv is not None else ""
        return (
            f"limit {limits} · server {self.server_running:.0f} run "
            f"{self.server_waiting:.0f} wait{kv}"
        )


@dataclass
class Resumed:
    """What the checkpoint already held when this session started."""

    calls: dict[str, int] = field(default_factory=lambda: {"gen": 0, "judge": 0})
    pairs: int = 0


def _eta(remaining: float, rate: float) -> str:
    if rate <= 0 or remaining <= 0:
        return "?" if remaining > 0 else "0s"
    seconds = int(remaining / rate)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Per stage done/total, calls/s, tokens/s, errors, retries, ETA and cost so far."""

    def __init__(
        self,
        stats: RunStats,
        expected_pairs: int | None,
        judge_orders: int,
        *,
        mode: str,
        interval_s: float,
        stream: TextIO | None = None,
        cost: CostMeter | None = None,
        resumed: Resumed | None = None,
        activity: Callable[[], Activity] | None = None,
    ) -> None:
        self.stats = stats
        self.cost = cost
        self.expected = expected_pairs
        self.orders = judge_orders
        self.mode = mode  # "bar" | "log"
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr  # looked up now, not at import
        self.resumed = resumed or Resumed()
        self.activity = activity or Activity
        self._task: asyncio.Task[None] | None = None
        self._bars: dict[str, tqdm] = {}
        self._status: tqdm | None = None
        self._redirect: contextlib.AbstractContextManager[Any] | None = None

    @classmethod
    def choose_mode(cls, stream: TextIO | None = None) -> str:
        return "bar" if (stream or sys.stderr).isatty() else "log"

    def start(self) -> None:
        if self.mode == "bar":
            # tqdm's own monitor thread is not needed (this task refreshes the bars) and
            # competes with the event loop for the GIL.
            tqdm.monitor_interval = 0
            for position, (stage, label, per_pair) in enumerate(
                (("gen", "generation", 2), ("judge", "judge", self.orders))
            ):
                total = self.expected * per_pair if self.expected is not None else None
                done = self.resumed.calls.get(stage, 0)
                self._bars[stage] = tqdm(
                    total=total,
                    initial=min(done, total) if total is not None else done,
                    desc=f"{label:<11}",
                    unit="call",
                    position=position,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                    smoothing=0.1,
                    bar_format=BAR_FORMAT,
                )
            self._status = tqdm(
                total=0, position=2, file=self.stream, leave=True, bar_format="{desc}"
            )
            # Log records print above the bars instead of through them.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        self._task = asyncio.create_task(self._run(), name="progress")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._update()
        for bar in [*self._bars.values(), *([self._status] if self._status else [])]:
            bar.close()
        self._bars.clear()
        self._status = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

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
        if not self._bars:
            return
        s = self.stats
        for stage, bar in self._bars.items():
            n = self.resumed.calls.get(stage, 0) + s.done[stage] + s.failed[stage]
            bar.n = min(n, bar.total) if bar.total is not None else n
            failed = s.failed[stage]
            bar.set_postfix_str(f"fail {failed}" if failed else "", refresh=False)
            bar.refresh()
        if self._status is not None:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self._status.set_description_str(self.status_text()[:width], refresh=True)

    def _session_rate(self) -> tuple[int, float]:
        """(pairs this session finished itself, its pairs per second)."""
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        new = max(0, s.pairs_finished - s.pairs_already_complete)
        return new, new / elapsed

    def _pairs_done(self) -> int:
        new, _ = self._session_rate()
        return self.resumed.pairs + new

    def eta(self) -> str:
        if self.expected is None:
            return "?"
        _, rate = self._session_rate()
        return _eta(max(0, self.expected - self._pairs_done()), rate)

    def status_text(self) -> str:
        """The line under the bars: rates, retries, rate-limit waits, cost."""
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        a = self.activity()
        parts = [
            f"{s.calls_sent / elapsed:.1f} calls/s",
            f"{(s.tokens_in + s.tokens_out) / elapsed:,.0f} tok/s",
        ]
        if a.limits is not None:
            parts.append(a.server_text())
        parts.append(f"retries {a.retries}")
        if a.rate_limited:
            parts.append(f"429s {a.rate_limited}")
        if a.waiting_s > 0:
            parts.append(f"rate-limit wait {a.waiting_s:.0f}s")
        parts += [f"ETA {self.eta()}", self._cost_text()]
        return " · ".join(parts)

    def line(self) -> str:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        done = self._pairs_done()
        pairs = f"{done}/{self.expected} pairs" if self.expected is not None else f"{done} pairs"
        a = self.activity()
        waiting = f", rate-limit wait {a.waiting_s:.0f}s" if a.waiting_s > 0 else ""
        if a.limits is not None:
            waiting += ", " + a.server_text()
        return (
            f"{pairs} ({s.pairs_failed} failed), generation {s.done['gen']} done "
            f"{s.failed['gen']} failed, judge {s.done['judge']} done {s.failed['judge']} failed, "
            f"{s.calls_sent / elapsed:.1f} calls/s, "
            f"{(s.tokens_in + s.tokens_out) / elapsed:,.0f} tokens/s, "
            f"retries {a.retries} (429s {a.rate_limited}){waiting}, "
            f"cost {self._cost_text()}, ETA {self.eta()}"
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
