"""The simulated server run on its own event loop in a background thread, for callers
that are not async themselves (tests, the demo)."""

from __future__ import annotations

import asyncio
import ssl
import threading

from workers.simulated.config import SimConfig
from workers.simulated.server import SimulatedServer


class ThreadedServer:
    """The simulated server on its own event loop in a background thread (tests, the demo)."""

    def __init__(
        self,
        config: SimConfig | None = None,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = SimulatedServer(config)
        self._port = port
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="simulated-server", daemon=True
        )

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        start = self.server.start(port=self._port, ssl_context=self._ssl)
        asyncio.run_coroutine_threadsafe(start, self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def stats(self, bodies: bool = False) -> dict:
        return asyncio.run_coroutine_threadsafe(self._stats(bodies), self._loop).result(30)

    async def _stats(self, bodies: bool) -> dict:
        return self.server.stats(bodies)
