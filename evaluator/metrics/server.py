"""The run's /metrics page, served over HTTP on the run's own event loop."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from evaluator.metrics.registry import RunMetrics


async def start_server(metrics: RunMetrics, host: str, port: int) -> web.AppRunner:
    """Serve /metrics on the run's own event loop (closed with the run, on every path)."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
