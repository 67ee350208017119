"""The settings of managed vLLM servers (a role's `[model.vllm]` / `[judge.vllm]` table):
what they may be, how they are checked, and the command line each server runs.
The processes themselves are workers.vllm_servers'.

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
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from workers.typecheck import alternatives, matches

__all__ = ["COMMAND_ENV", "DEFAULT_COMMAND", "ServerSettings", "ServerSettingsError", "parse_gpus"]


COMMAND_ENV = "VALBENCH_SERVER_COMMAND"
DEFAULT_COMMAND = ("vllm", "serve", "{model}", "{vllm_args}")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class ServerSettingsError(ValueError):
    """A `[model.vllm]` / `[judge.vllm]` setting is wrong; the message names it."""


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
