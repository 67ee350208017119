"""`python -m evaluator view DIR [DIR2 ...]`: serve the viewer until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from evaluator.config import ConfigError
from evaluator.run import UserError
from evaluator.view.checkpoint import ViewError
from evaluator.view.server import LOOPBACK, serve


def view(dirs: list[Path], host: str, port: int, emit: Callable[[str], None]) -> int:
    """Serve until SIGINT or SIGTERM; 0 then. Bad directories and busy ports: UserError."""
    if host not in LOOPBACK:
        print(
            f"warning: listening on {host}: the viewer has no login; anyone who can reach "
            "this address can read every answer of these runs",
            file=sys.stderr,
        )

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(
                dirs,
                host,
                port,
                stop=stop,
                on_ready=lambda url: emit(
                    f"viewer: {url} (read-only; {len(dirs)} run(s); Ctrl-C to stop)"
                ),
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(go())
    except (ViewError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # the port: in use, or not ours to take
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "(0 picks a free one)"
        ) from None
    return 0
