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

The launch command is a template, so the same code path starts the project's
simulated server in the tests (no vLLM binary and no GPU exist there):

    command = ["{python}", "-m", "workers.simulated", "--port", "{port}"]

Placeholders: {python} {model} {served_model_name} {host} {port} {index} {gpus}
{tensor_parallel} {max_num_seqs} {max_model_len}; an argument that is exactly
"{vllm_args}" becomes the vLLM flags below. The default is
`vllm serve {model} {vllm_args}`; the environment variable
VALBENCH_SERVER_COMMAND (a shell-quoted template) replaces the default when a
config gives no `command`.

Nothing here imports vllm: the module works (and is tested) without it; only
the default command needs the `vllm` extra installed.

vLLM flag names follow vLLM's CLI guide (https://docs.vllm.ai/en/v0.31.0/cli/,
`vllm serve --help=all`: --host, --port, --served-model-name,
--tensor-parallel-size, --max-num-seqs, --max-model-len, --enable-prefix-caching)
and, for the structured-output backend, docs/features/structured_outputs.md of
the vLLM repository: `--structured-outputs-config.backend` (it replaced
`--guided-decoding-backend`, which older releases used).

Each server's stdout and stderr go to `LOG_DIR/{stage}-{index}.log` (appended
across restarts, one header line per start); `LOG_DIR/{stage}-{index}.pid`
records the running process (pid and start time) so that a later start can
stop servers left behind by an evaluator that was killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from workers.typecheck import alternatives, matches

log = logging.getLogger("evaluator")

__all__ = [
    "COMMAND_ENV",
    "ServerFleet",
    "ServerGroup",
    "ServerSettings",
    "ServerSettingsError",
    "ServerStartError",
    "ServersFailed",
    "parse_gpus",
]

COMMAND_ENV = "VALBENCH_SERVER_COMMAND"
DEFAULT_COMMAND = ("vllm", "serve", "{model}", "{vllm_args}")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_POLL_S = 0.25  # how often the watcher looks at its processes (a few syscalls each)


class ServerSettingsError(ValueError):
    """A `[model.vllm]` / `[judge.vllm]` setting is wrong; the message names it."""


class ServerStartError(RuntimeError):
    """A server did not become ready (exited, or the readiness timeout passed)."""


class ServersFailed(RuntimeError):
    """Every server of a group died and used up its restarts."""


def parse_gpus(value: Any, where: str = "gpus") -> list[str]:
    """GPU ids from "0-7", "0,2,5", "0-3,6", an int, or a list of ints/strings."""
    if isinstance(value, bool):
        raise ServerSettingsError(f"{where} must be GPU ids like 0-7 or 0,1, got {value!r}")
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, list):
        out = []
        for item in value:
            out += parse_gpus(item, where)
        return out
    if not isinstance(value, str) or not value.strip():
        raise ServerSettingsError(f"{where} must be GPU ids like 0-7 or 0,1, got {value!r}")
    out = []
    for part in value.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ServerSettingsError(f"{where}: range {part} runs backwards")
            out += [str(i) for i in range(lo, hi + 1)]
        elif part.isdigit():
            out.append(str(int(part)))
        else:
            raise ServerSettingsError(f"{where}: {part!r} is not a GPU id or range (e.g. 0-7)")
    return out


@dataclass
class ServerSettings:
    """How to run one stage's servers. Keys of `[model.vllm]` / `[judge.vllm]`."""

    model: str | None = None  # what the server loads (hub id or path); default: the stage's model
    gpus: list[str] = field(default_factory=lambda: ["0"])
    tensor_parallel: int = 1  # GPUs per server; servers = len(gpus) / tensor_parallel
    max_num_seqs: int = 256  # sequences a server batches at once
    max_model_len: int | None = None  # prompt + output tokens per request
    structured_output_backend: str | None = None  # e.g. auto, xgrammar, guidance; None: omit
    prefix_caching: bool = True  # every judge call starts with the same rubric
    extra_args: list[str] = field(default_factory=list)  # more `vllm serve` flags
    command: list[str] | None = None  # launch template (see the module docstring)
    host: str = "127.0.0.1"
    port: int | None = None  # first port (servers use port, port+1, ...); None: free ports
    ready_timeout_s: float = 1800.0  # loading a large model can take many minutes
    max_restarts: int = 3  # per server, for the whole run
    restart_backoff_s: float = 5.0  # first wait before a restart, doubled each time
    stop_grace_s: float = 30.0  # SIGTERM, then SIGKILL after this

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "[vllm]") -> ServerSettings:
        if not isinstance(raw, dict):
            raise ServerSettingsError(f"{where} must be a table of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ServerSettingsError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None:
                continue
            if name == "gpus":
                values[name] = parse_gpus(value, f"{where} gpus")
                continue
            hint = _hints()[name]
            if not matches(value, hint):
                raise ServerSettingsError(
                    f"{where}: {name} must be {_tname(hint)}, got {value!r:.60}"
                )
            values[name] = value
        settings = cls(**values)
        settings.check(where)
        return settings

    def check(self, where: str = "[vllm]") -> None:
        if not self.gpus:
            raise ServerSettingsError(f"{where}: gpus is empty")
        if len(set(self.gpus)) != len(self.gpus):
            raise ServerSettingsError(f"{where}: gpus lists a GPU twice ({','.join(self.gpus)})")
        if self.tensor_parallel < 1 or len(self.gpus) % self.tensor_parallel:
            raise ServerSettingsError(
                f"{where}: tensor_parallel {self.tensor_parallel} must divide the "
                f"{len(self.gpus)} GPUs ({','.join(self.gpus)})"
            )
        for name in ("max_num_seqs", "max_model_len", "ready_timeout_s", "stop_grace_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ServerSettingsError(f"{where}: {name} must be positive")
        if self.max_restarts < 0 or self.restart_backoff_s < 0:
            raise ServerSettingsError(f"{where}: max_restarts and restart_backoff_s must be >= 0")
        if self.port is not None and not 0 < self.port < 65536 - len(self.gpus):
            raise ServerSettingsError(f"{where}: port {self.port} is out of range")
        if self.command is not None and not self.command:
            raise ServerSettingsError(f"{where}: command is empty")
        for arg in self.command or ():
            for name in _PLACEHOLDER.findall(arg):
                if name not in _KNOWN_PLACEHOLDERS:
                    raise ServerSettingsError(
                        f"{where}: command has an unknown placeholder {{{name}}} "
                        f"(known: {', '.join(sorted(_KNOWN_PLACEHOLDERS))})"
                    )

    def groups(self) -> list[list[str]]:
        """The GPUs of each server: consecutive runs of `tensor_parallel` ids."""
        tp = self.tensor_parallel
        return [self.gpus[i : i + tp] for i in range(0, len(self.gpus), tp)]

    def vllm_args(self, served_name: str, host: str, port: int) -> list[str]:
        """The `vllm serve` flags this workload wants (after `serve MODEL`)."""
        args = [
            "--host",
            host,
            "--port",
            str(port),
            "--served-model-name",
            served_name,
            "--tensor-parallel-size",
            str(self.tensor_parallel),
            "--max-num-seqs",
            str(self.max_num_seqs),
        ]
        if self.prefix_caching:
            args.append("--enable-prefix-caching")
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.structured_output_backend:
            args += ["--structured-outputs-config.backend", self.structured_output_backend]
        return args + list(self.extra_args)

    def template(self) -> list[str]:
        if self.command is not None:
            return list(self.command)
        from_env = os.environ.get(COMMAND_ENV)
        if from_env:
            return shlex.split(from_env)
        return list(DEFAULT_COMMAND)

    def argv(self, served_name: str, port: int, index: int, gpus: list[str]) -> list[str]:
        """The command line of server `index`, placeholders filled in."""
        values = {
            "python": sys.executable,
            "model": self.model or served_name,
            "served_model_name": served_name,
            "host": self.host,
            "port": str(port),
            "index": str(index),
            "gpus": ",".join(gpus),
            "tensor_parallel": str(self.tensor_parallel),
            "max_num_seqs": str(self.max_num_seqs),
            "max_model_len": str(self.max_model_len or ""),
        }
        out: list[str] = []
        for arg in self.template():
            if arg == "{vllm_args}":
                out += self.vllm_args(served_name, self.host, port)
                continue

            def fill(m: re.Match[str]) -> str:
                if m.group(1) not in values:
                    raise ServerSettingsError(f"launch command: unknown placeholder {m.group(0)}")
                return values[m.group(1)]

            out.append(_PLACEHOLDER.sub(fill, arg))
        return out


_KNOWN_PLACEHOLDERS = frozenset(
    "python model served_model_name host port index gpus tensor_parallel max_num_seqs "
    "max_model_len vllm_args".split()
)


@functools.cache
def _hints() -> dict[str, Any]:
    """ServerSettings' field types: what each key of a table must be."""
    return typing.get_type_hints(ServerSettings)


def _tname(hint: Any) -> str:
    words = {int: "an integer", str: "text", bool: "true or false", float: "a number"}
    (kind,) = alternatives(hint)
    if typing.get_origin(kind) is list:
        return "a list of strings"
    return words.get(kind, getattr(kind, "__name__", str(kind)))


def free_ports(host: str, n: int) -> list[int]:
    """`n` distinct ports free right now. All are held open until all are chosen, so
    none repeats; a server binding it later races only with unrelated programs."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # the id was reused by someone else's process: not ours
        return False


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [t.strip() for t in text.splitlines() if t.strip()][-lines:]
    return " | ".join(tail)


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
            _stop_leftover(server.pid_path)
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
        record = {"pid": server.proc.pid, "start_time": _start_time(server.proc.pid)}
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
                tail = _log_tail(server.log_path)
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
            _signal_group(server.proc.pid, signal.SIGKILL)  # leftovers of the dead server
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
                        _signal_group(server.proc.pid, signal.SIGKILL)
                        await asyncio.to_thread(server.proc.wait)
                    return
            log.warning("%s is ready again after restart %d", server.label, server.restarts)
        finally:
            server.restarting = False

    # -- stop ---------------------------------------------------------------
    def signal_all(self, sig: int) -> None:
        for server in self.servers:
            if server.proc is not None:
                _signal_group(server.proc.pid, sig)

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


def _stop_leftover(pid_path: Path) -> None:
    """Stop a server recorded in `pid_path` that is still running (its evaluator was
    SIGKILLed and could not stop it); otherwise it would hold its GPUs and port."""
    try:
        record = orjson.loads(pid_path.read_bytes())
        pid, started = int(record["pid"]), record.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if started is None or _start_time(pid) != started:
        return  # gone, or the pid now belongs to another process
    log.warning("stopping a server left running by an earlier evaluator (pid %d)", pid)
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)


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
