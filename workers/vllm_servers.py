"""OpenAI-compatible servers (vLLM) started, watched, restarted and stopped by the evaluator.

One `ServerGroup` serves one model for one stage: a server process per GPU, or
per tensor-parallel group of GPUs, each with its own CUDA_VISIBLE_DEVICES and
port. The group starts them all, waits until each answers GET /health and then
lists the served model on GET /v1/models, and hands their URLs to the stage's
endpoint pool. A server that dies is restarted on the same port, a bounded
number of times with growing waits; meanwhile the pool's own health check keeps
it out of rotation and re-sends its calls elsewhere. `ServerFleet` holds the
groups of a run and stops every process on every exit path: SIGTERM to each
server's process group, then SIGKILL after a grace period.

The launch command, its placeholders and the vLLM flags are workers.server_settings'.

Each server's stdout and stderr go to `LOG_DIR/{stage}-{index}.log` (appended
across restarts, one header line per start); `LOG_DIR/{stage}-{index}.pid`
records the running process (pid and start time) so that a later start can
stop servers left behind by an evaluator that was killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from workers.server_processes import (
    free_ports,
    log_tail,
    signal_group,
    start_time,
    stop_leftover,
)
from workers.server_settings import ServerSettings

log = logging.getLogger("evaluator")

__all__ = ["ServerFleet", "ServerGroup", "ServerStartError", "ServersFailed"]

_POLL_S = 0.25  # how often the watcher looks at its processes (a few syscalls each)


class ServerStartError(RuntimeError):
    """A server did not become ready (exited, or the readiness timeout passed)."""


class ServersFailed(RuntimeError):
    """Every server of a group died and used up its restarts."""


@dataclass
class ManagedServer:
    stage: str
    index: int
    gpus: list[str]
    port: int
    argv: list[str]
    log_path: Path
    pid_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    restarts: int = 0
    failed: bool = False  # died and used up its restarts
    restarting: bool = False

    @property
    def label(self) -> str:
        return f"{self.stage} server {self.index} (GPUs {','.join(self.gpus)}, port {self.port})"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ServerGroup:
    """The servers of one stage: start, readiness, watch and restart, stop."""

    def __init__(
        self,
        stage: str,
        settings: ServerSettings,
        served_name: str,
        log_dir: Path,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.served_name = served_name
        self.log_dir = log_dir
        self.on_failed = on_failed
        self.servers: list[ManagedServer] = []
        self._watcher: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.settings.host}:{s.port}/v1" for s in self.servers]

    # -- start --------------------------------------------------------------
    def launch(self) -> None:
        """Start every server process (not waiting for readiness)."""
        s = self.settings
        groups = s.groups()
        ports = (
            [s.port + i for i in range(len(groups))]
            if s.port is not None
            else free_ports(s.host, len(groups))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index, (gpus, port) in enumerate(zip(groups, ports, strict=True)):
            server = ManagedServer(
                stage=self.stage,
                index=index,
                gpus=gpus,
                port=port,
                argv=s.argv(self.served_name, port, index, gpus),
                log_path=self.log_dir / f"{self.stage}-{index}.log",
                pid_path=self.log_dir / f"{self.stage}-{index}.pid",
            )
            stop_leftover(server.pid_path)
            self.servers.append(server)
            self._spawn(server)

    def _spawn(self, server: ManagedServer) -> None:
        server.starts += 1
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(server.gpus)}
        with server.log_path.open("ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            logf.write(
                f"=== start {server.starts} at {stamp}: {shlex.join(server.argv)} "
                f"(CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}) ===\n".encode()
            )
            logf.flush()
            try:
                # Own process group (session): Ctrl-C on the terminal reaches the evaluator
                # only, which drains its calls before stopping the servers; and the whole
                # group (vLLM's worker processes too) is signalled at stop.
                server.proc = subprocess.Popen(
                    server.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServerStartError(
                    f"cannot start {server.label}: {server.argv[0]}: {exc.strerror or exc}"
                    + (" (is the vllm extra installed?)" if server.argv[0] == "vllm" else "")
                ) from None
        record = {"pid": server.proc.pid, "start_time": start_time(server.proc.pid)}
        server.pid_path.write_bytes(orjson.dumps(record))

    async def wait_ready(self) -> None:
        """Until every server answers; raises ServerStartError naming the first that cannot."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        async with aiohttp.ClientSession() as session:
            await all_or_none([self._ready(s, session, deadline) for s in self.servers])
        log.info(
            "%s servers ready: %s (logs in %s)", self.stage, ", ".join(self.urls), self.log_dir
        )

    async def _ready(
        self, server: ManagedServer, session: aiohttp.ClientSession, deadline: float
    ) -> None:
        base = f"http://{self.settings.host}:{server.port}"
        timeout = aiohttp.ClientTimeout(total=5)
        while True:
            assert server.proc is not None
            code = server.proc.poll()
            if code is not None:
                tail = log_tail(server.log_path)
                raise ServerStartError(
                    f"{server.label} exited with code {code} while starting; see "
                    f"{server.log_path}" + (f" (last lines: {tail})" if tail else "")
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{server.label} was not ready within {self.settings.ready_timeout_s:g}s "
                    f"(GET /health and /v1/models); see {server.log_path}"
                )
            try:
                async with session.get(base + "/health", timeout=timeout) as resp:
                    healthy = resp.status == 200
                if healthy:
                    async with session.get(base + "/v1/models", timeout=timeout) as resp:
                        if resp.status == 200:
                            served = [m.get("id") for m in (await resp.json()).get("data", [])]
                            if self.served_name in served:
                                return
                            raise ServerStartError(
                                f"{server.label} answers but does not serve "
                                f"{self.served_name!r} (it serves {', '.join(map(str, served))})"
                            )
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError):
                pass  # not listening yet, or not answering properly yet
            await asyncio.sleep(0.5)

    # -- watch and restart --------------------------------------------------
    def watch(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.stage}-servers-watch")

    async def _watch(self) -> None:
        while not self._stopping:
            for server in self.servers:
                if server.failed or server.restarting or server.alive:
                    continue
                assert server.proc is not None
                code = server.proc.returncode
                if server.restarts >= self.settings.max_restarts:
                    server.failed = True
                    log.error(
                        "%s exited with code %s and has used its %d restarts; it stays down "
                        "(see %s)",
                        server.label,
                        code,
                        self.settings.max_restarts,
                        server.log_path,
                    )
                    if all(s.failed for s in self.servers) and self.on_failed is not None:
                        self.on_failed(
                            ServersFailed(
                                f"every {self.stage} server died and used up its restarts; "
                                f"see the logs in {self.log_dir}"
                            )
                        )
                    continue
                server.restarting = True
                task = asyncio.create_task(self._restart(server, code))
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
            await asyncio.sleep(_POLL_S)

    async def _restart(self, server: ManagedServer, code: int | None) -> None:
        server.restarts += 1
        wait = self.settings.restart_backoff_s * 2 ** (server.restarts - 1)
        log.warning(
            "%s exited with code %s; restart %d of %d in %.3gs (its calls go to the other "
            "servers meanwhile; log %s)",
            server.label,
            code,
            server.restarts,
            self.settings.max_restarts,
            wait,
            server.log_path,
        )
        try:
            await asyncio.sleep(wait)
            if self._stopping:
                return
            signal_group(server.proc.pid, signal.SIGKILL)  # leftovers of the dead server
            try:
                self._spawn(server)
            except ServerStartError as exc:
                log.error("%s", exc)
                return  # the watcher sees it still dead and counts another restart
            deadline = time.monotonic() + self.settings.ready_timeout_s
            async with aiohttp.ClientSession() as session:
                try:
                    await self._ready(server, session, deadline)
                except ServerStartError as exc:
                    log.error("%s", exc)
                    if server.alive:  # hung: kill it; the watcher restarts it if restarts remain
                        signal_group(server.proc.pid, signal.SIGKILL)
                        await asyncio.to_thread(server.proc.wait)
                    return
            log.warning("%s is ready again after restart %d", server.label, server.restarts)
        finally:
            server.restarting = False

    # -- stop ---------------------------------------------------------------
    def signal_all(self, sig: int) -> None:
        for server in self.servers:
            if server.proc is not None:
                signal_group(server.proc.pid, sig)

    async def stop_watching(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._watcher, *self._restarts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None

    def forget(self) -> None:
        """After every process is gone: their pid files say nothing any more."""
        for server in self.servers:
            with contextlib.suppress(OSError):
                server.pid_path.unlink()


async def all_or_none(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run `coros` together; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ServerFleet:
    """Every managed server of a run. Use as `async with fleet:`: it starts all groups
    (in parallel: loading models is slow), and stops every process when the block exits,
    whatever the reason (an error, a cancellation by a signal, or a normal end)."""

    def __init__(self, groups: list[ServerGroup]) -> None:
        self.groups = groups

    def group(self, stage: str) -> ServerGroup | None:
        return next((g for g in self.groups if g.stage == stage), None)

    async def __aenter__(self) -> ServerFleet:
        try:
            for group in self.groups:
                group.launch()
            await all_or_none([g.wait_ready() for g in self.groups])
        except BaseException:
            await self.stop()
            raise
        for group in self.groups:
            group.watch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """SIGTERM every server's process group; SIGKILL what is left after the grace period.
        A cancellation while waiting kills at once; the processes are reaped on every path."""
        try:
            for group in self.groups:
                await group.stop_watching()
            self._signal(signal.SIGTERM)
            grace = max((g.settings.stop_grace_s for g in self.groups), default=0)
            deadline = time.monotonic() + grace
            # Popen offers no awaitable exit: poll (a few syscalls per tenth of a second).
            while self._any_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        finally:
            # SIGKILL the groups too: a server that exited may have left workers behind.
            self._signal(signal.SIGKILL)
            for group in self.groups:
                for server in group.servers:
                    if server.proc is not None:
                        server.proc.wait()  # just killed: returns at once
                group.forget()

    def _signal(self, sig: int) -> None:
        for group in self.groups:
            group.signal_all(sig)

    def _any_alive(self) -> bool:
        return any(s.alive for g in self.groups for s in g.servers)
