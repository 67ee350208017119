"""SIGINT/SIGTERM during a run: what each phase does with them.

While calls are scheduled, the first signal drains the calls in flight and the second stops
at once (Drain); in any other phase (servers starting, endpoint checks, servers stopping) a
signal cancels the run's task, so every exit of the session's scope runs; while the outputs
are written (synchronous work) a signal stops the report after its current file
(stop_on_signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("evaluator")


class RunSignals:
    """SIGINT/SIGTERM for the whole run, given to the handler of the phase in progress.

    A context manager: the loop's handlers are installed on entry and removed on exit."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.count = 0
        self.handler: Callable[[str], None] | None = None
        self._installed: list[signal.Signals] = []

    def __enter__(self) -> RunSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig.name)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass

    def _on_signal(self, signame: str) -> None:
        self.count += 1
        if self.handler is not None:
            self.handler(signame)
        elif self.task is not None:
            log.warning("%s: stopping", signame)
            self.task.cancel()

    def remove(self) -> None:
        for sig in self._installed:
            self.loop.remove_signal_handler(sig)
        self._installed.clear()


class Drain:
    """The scheduling phase's handler: the first signal asks the scheduler to stop after
    the calls in flight (up to `drain_timeout`), the second cancels the run's task.

    A context manager: the handler is the signals' while it is entered."""

    def __init__(
        self, signals: RunSignals, request_stop: Callable[[], None], drain_timeout: float
    ) -> None:
        self.signals = signals
        self.request_stop = request_stop
        self.drain_timeout = drain_timeout
        self.main = asyncio.current_task()
        self.received = 0

    @property
    def at_once(self) -> bool:
        """Whether a second signal asked to stop at once (the outputs are then not written:
        `report DIR` rebuilds them)."""
        return self.received >= 2

    def __enter__(self) -> Drain:
        self.signals.handler = self._on_signal
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.handler = None

    def _on_signal(self, signame: str) -> None:
        self.received += 1
        if self.received == 1:
            log.warning(
                "%s: finishing in-flight calls (up to %gs), then stopping; "
                "send again to stop at once",
                signame,
                self.drain_timeout,
            )
            self.request_stop()
        elif self.main is not None:
            self.main.cancel()


@contextlib.contextmanager
def stop_on_signal(signals: RunSignals | None = None) -> Iterator[threading.Event]:
    """While the outputs are written (synchronous work: the event loop cannot run its signal
    handlers), SIGINT/SIGTERM set the returned flag at once; the report stops after the file
    it is writing (report.ReportInterrupted)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            log.warning(
                "%s: stopping after the output file being written", signal.Signals(signum).name
            )
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
    if signals is not None:  # the loop hears of the signal later: nothing more to do then
        signals.handler = lambda name: stop.set()
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
