"""HTTP in helper processes: more than one event loop's worth of requests per run.

One event loop runs out of CPU at roughly 2,000-3,000 calls/s with 1,000+ calls in flight,
and most of that CPU is the HTTP client's (aiohttp's request and response path), not the
scheduler's. With `--http-processes N` the run's event loop keeps scheduling, pacing,
retries, routing and checkpointing, and N helper processes do the HTTP exchanges: each
runs its own event loop with one ordinary `HTTPClient` per endpoint (the same class as in
process, so timeouts, error classes, rate-limit headers and key redaction are unchanged).

Wire between the run and a helper: length-prefixed pickle frames over the helper's
stdin/stdout (both ends are this module, started by this process, so pickle is safe).
Calls and answers are batched: one frame per event-loop turn each way, so the run pays a
few microseconds per call, not an HTTP exchange.

    run -> helper   (opens, calls)   opens: [(endpoint id, EndpointConfig)], calls: [(call id, endpoint id, body)]
    helper -> run   [(call id, Attempt)]

Lifetimes. Helpers ignore SIGINT/SIGTERM and run in their own session: the run decides
(it drains in-flight calls on the first Ctrl-C). A helper leaves when its stdin closes,
which happens when the run closes the group or dies, even by SIGKILL, and then cancels
whatever it still has in flight. If a helper dies, its calls in flight come back to the
pool as transient failures (retried like a reset connection) and it is started again, a
few times at most; after that, calls fail as fatal, which stops the run (resumable).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import Any

from workers.base import CallFailure, ErrorClass
from workers.client import Attempt, EndpointConfig, HTTPClient

__all__ = ["HTTPProcesses", "RemoteClient"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">I")
# The helper imports this checkout's `workers`, whatever the run's working directory.
_ROOT = str(Path(__file__).resolve().parent.parent)
MAX_RESTARTS = 5  # helper deaths tolerated per run before calls fail as fatal


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame; raises asyncio.IncompleteReadError at end of stream."""
    (size,) = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    return pickle.loads(await reader.readexactly(size))


class _Helper:
    """One helper process as the run sees it: its pipes, its calls in flight, its outbox."""

    def __init__(self, proc: asyncio.subprocess.Process, index: int) -> None:
        self.proc = proc
        self.index = index
        self.pending: dict[int, asyncio.Future[Attempt]] = {}
        self.opens: list[tuple[int, EndpointConfig]] = []
        self.calls: list[tuple[int, int, bytes]] = []
        self.alive = True
        self.reader_task: asyncio.Task[None] | None = None


class HTTPProcesses:
    """A run's helper processes, shared by all its endpoints (both stages)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("HTTPProcesses needs at least one process")
        self.n = n
        self._helpers: list[_Helper] = []
        self._endpoints: dict[int, EndpointConfig] = {}
        self._ids = itertools.count()
        self._flush_scheduled = False
        self._restarts = 0
        self._closing = False
        self._lock = asyncio.Lock()

    # -- lifetime -------------------------------------------------------------
    async def __aenter__(self) -> HTTPProcesses:
        try:
            for i in range(self.n):
                self._helpers.append(await self._spawn(i))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _spawn(self, index: int) -> _Helper:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers.http_processes",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C goes to the run, which drains
            limit=1 << 26,
        )
        helper = _Helper(proc, index)
        helper.opens = list(self._endpoints.items())
        helper.reader_task = asyncio.create_task(self._read(helper), name=f"http-helper-{index}")
        if helper.opens:
            self._schedule_flush()
        return helper

    async def close(self) -> None:
        """Stop every helper: close its stdin, wait briefly, then kill. Calls still in
        flight (only after a "stop at once") are answered as not done."""
        self._closing = True
        for h in self._helpers:
            if h.proc.stdin is not None and not h.proc.stdin.is_closing():
                h.proc.stdin.close()
        for h in self._helpers:
            try:
                await asyncio.wait_for(h.proc.wait(), 5.0)
            except TimeoutError:
                h.proc.kill()
                await h.proc.wait()
            if h.reader_task is not None:
                await h.reader_task
            self._fail_pending(h, "the run closed its HTTP helper processes")
        self._helpers.clear()

    # -- calls ----------------------------------------------------------------
    def register(self, config: EndpointConfig) -> int:
        """Make an endpoint known to every helper; returns its id for `attempt`."""
        eid = len(self._endpoints)
        self._endpoints[eid] = config
        for h in self._helpers:
            h.opens.append((eid, config))
        if self._helpers:
            self._schedule_flush()
        return eid

    async def attempt(self, eid: int, body: bytes) -> Attempt:
        helper = await self._pick()
        if helper is None:
            return Attempt(
                CallFailure(
                    ErrorClass.FATAL,
                    f"the HTTP helper processes exited {self._restarts} times; "
                    "see the log above for why (run with --http-processes 0 to send in process)",
                    None,
                )
            )
        cid = next(self._ids)
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        helper.pending[cid] = future
        helper.calls.append((cid, eid, body))
        self._schedule_flush()
        return await future

    async def _pick(self) -> _Helper | None:
        live = [h for h in self._helpers if h.alive]
        if len(live) < self.n and not self._closing:
            async with self._lock:  # one restart at a time, not one per waiting call
                for i, h in enumerate(self._helpers):
                    if not h.alive and self._restarts < MAX_RESTARTS:
                        self._restarts += 1
                        log.warning("HTTP helper process %d exited; starting it again", h.index)
                        self._helpers[i] = await self._spawn(h.index)
            live = [h for h in self._helpers if h.alive]
        if not live:
            return None
        return min(live, key=lambda h: len(h.pending))

    def _schedule_flush(self) -> None:
        # One write per helper per event-loop turn, however many calls were queued in it.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for h in self._helpers:
            if (h.opens or h.calls) and h.alive and h.proc.stdin is not None:
                h.proc.stdin.write(_frame((h.opens, h.calls)))
                h.opens, h.calls = [], []

    async def _read(self, helper: _Helper) -> None:
        assert helper.proc.stdout is not None
        try:
            while True:
                for cid, outcome in await _read_frame(helper.proc.stdout):
                    future = helper.pending.pop(cid, None)
                    if future is not None and not future.done():
                        future.set_result(outcome)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            pass
        helper.alive = False
        if not self._closing:
            code = await helper.proc.wait()
            log.warning("HTTP helper process %d exited with code %s", helper.index, code)
        self._fail_pending(helper, "its HTTP helper process exited")

    @staticmethod
    def _fail_pending(helper: _Helper, why: str) -> None:
        # The request may have reached the endpoint: retried like a connection reset.
        for future in helper.pending.values():
            if not future.done():
                future.set_result(Attempt(CallFailure(ErrorClass.TRANSIENT, why, None)))
        helper.pending.clear()
        helper.calls.clear()


class RemoteClient:
    """One endpoint's client whose requests go through the run's helper processes.

    It has the in-process client's surface (check, attempt, redact, close); the start-up
    check and health checks stay in process, as they are rare."""

    def __init__(self, local: HTTPClient, group: HTTPProcesses) -> None:
        self.local = local
        self.config = local.config
        self.wire = local.wire
        self.url = local.url
        self._group = group
        self._eid = group.register(local.config)

    async def __aenter__(self) -> RemoteClient:
        await self.local.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.local.close()

    def redact(self, text: str) -> str:
        return self.local.redact(text)

    async def check(self, timeout_s: float = 15.0) -> list[str]:
        return await self.local.check(timeout_s)

    async def attempt(self, body: bytes) -> Attempt:
        return await self._group.attempt(self._eid, body)


# --------------------------------------------------------------------------- helper side
async def _serve(stdin_fd: int, stdout_fd: int) -> None:
    from workers.providers import get_provider

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(stdin_fd, "rb", buffering=0)
    )
    transport, _ = await loop.connect_write_pipe(
        asyncio.BaseProtocol, os.fdopen(stdout_fd, "wb", buffering=0)
    )
    clients: dict[int, HTTPClient] = {}
    tasks: set[asyncio.Task[None]] = set()
    outbox: list[tuple[int, Attempt]] = []
    scheduled = False

    def flush() -> None:
        nonlocal scheduled, outbox
        scheduled = False
        if outbox and not transport.is_closing():
            transport.write(_frame(outbox))
        outbox = []

    async def one(cid: int, client: HTTPClient, body: bytes) -> None:
        nonlocal scheduled
        outcome = await client.attempt(body)
        outbox.append((cid, outcome))
        if not scheduled:
            scheduled = True
            loop.call_soon(flush)

    try:
        while True:
            try:
                opens, calls = await _read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the run closed us, or is gone
            for eid, config in opens:
                client = get_provider(config.provider).client(config)
                await client.__aenter__()
                clients[eid] = client
            for cid, eid, body in calls:
                task = loop.create_task(one(cid, clients[eid], body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients.values():
            await client.close()
        transport.close()


def main() -> int:
    # The run owns the signals: it drains on Ctrl-C and closes our stdin when done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Our stdout carries frames only: anything else printed goes to stderr instead.
    stdin_fd, stdout_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="http helper: %(levelname)s %(message)s")
    from workers.gctune import session_gc

    with session_gc():
        try:
            import uvloop
        except ImportError:
            asyncio.run(_serve(stdin_fd, stdout_fd))
        else:
            uvloop.run(_serve(stdin_fd, stdout_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
