"""The viewer's web server (aiohttp): routes, the runs' index threads, and their lifetimes.

Read-only: it serves what the run directories hold and never writes to them. It binds to
127.0.0.1 unless told otherwise, and answers only requests addressed to the host it
serves (a web page elsewhere cannot read the answers through DNS rebinding).
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from evaluator.view import pages, queries
from evaluator.view.index import RunIndex
from evaluator.view.server_state import RunView, Viewer

log = logging.getLogger("evaluator.view")
STATIC = Path(__file__).parent / "static"
_PLOT = re.compile(r"^[\w.-]+\.png$")
# Pages: scripts and styles only from the viewer itself; no inline script runs, so an
# answer that escaped escaping still could not. report.html has inline styles, no scripts.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def make_app(viewer: Viewer, host: str, port_of: Callable[[], int]) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if host in LOOPBACK:
            port = port_of()
            allowed = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
            if request.host not in allowed:
                return web.Response(status=421, text="this viewer serves 127.0.0.1 only\n")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # as a plain response, so it gets the headers too
            response = web.Response(status=exc.status, text=exc.text, content_type="text/plain")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app = web.Application(middlewares=[guard])
    h = Handlers(viewer)
    app.router.add_get("/", h.pair_list)
    app.router.add_get("/pair/{id}", h.pair)
    app.router.add_get("/run/{i}", h.run)
    app.router.add_get("/run/{i}/report.html", h.report)
    app.router.add_get("/run/{i}/plots/{name}", h.plot)
    app.router.add_get("/static/{name}", h.static)
    app.router.add_get("/api/status", h.status)
    return app


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


class Handlers:
    def __init__(self, viewer: Viewer) -> None:
        self.v = viewer

    def _page(self, template: str, current: int | None = None, **context: Any) -> str:
        return pages.render(
            template,
            runs=self.v.runs,
            current_run=current,
            live_text=self.v.live_text(),
            simulated=self.v.simulated_text(),
            **context,
        )

    def _error(self, status: int, title: str, message: str) -> web.Response:
        return _html(self._page("error.html", title=title, message=message), status)

    def _run(self, request: web.Request) -> RunView:
        text = request.match_info["i"]
        if not text.isdigit() or int(text) >= len(self.v.runs):
            raise web.HTTPNotFound(text=f"no run {text}")
        return self.v.runs[int(text)]

    async def pair_list(self, request: web.Request) -> web.Response:
        try:
            f = queries.Filters.parse(request.query, len(self.v.runs))
        except queries.FilterError as exc:
            return self._error(400, "Filters not understood", str(exc))
        run = self.v.runs[f.run]
        paths = [r.index.path for r in self.v.runs]
        page = await asyncio.to_thread(queries.list_page, paths, f, run.index.fts)
        facets = await asyncio.to_thread(run.facets)
        return _html(
            self._page(
                "list.html",
                f.run,
                run=run,
                f=f,
                page=page,
                facets=facets,
                flag_choices=[
                    ("none", "neither side"),
                    ("one", "one side"),
                    ("both", "both sides"),
                    ("any", "either side"),
                ],
                statuses=queries.STATUSES,
                sorts=[
                    ("seq", "dataset order"),
                    ("id", "pair id"),
                    ("score", "score, lowest first"),
                    ("gap", "largest disagreement"),
                ],
                per_page=queries.PER_PAGE,
            )
        )

    async def pair(self, request: web.Request) -> web.Response:
        text = request.match_info["id"]
        if not re.fullmatch(r"-?\d{1,19}", text):
            return self._error(404, "No such pair", f"{text!r} is not a pair id")
        pair_id = int(text)
        found = []
        for run in self.v.runs:
            row = await asyncio.to_thread(run.index.pair_row, pair_id)
            if row is not None and run.index.config is not None:
                found.append((run.label, row, run.index.config.judge_orders))
        if not found:
            building = [r.label for r in self.v.runs if r.index.state != "ready"]
            later = (
                f" (still indexing {', '.join(building)}: try again shortly)" if building else ""
            )
            return self._error(
                404, "No such pair", f"pair {pair_id} is in none of these runs{later}"
            )
        try:
            f = queries.Filters.parse(request.query, len(self.v.runs))
        except queries.FilterError:
            f = queries.Filters()
        context = pages.pair_context(found)
        return _html(self._page("pair.html", f.run, back=f.query(), **context))

    async def run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        context = await asyncio.to_thread(run.overview)
        return _html(self._page("run.html", run.i, run=run, **context))

    async def report(self, request: web.Request) -> web.StreamResponse:
        path = self._run(request).run_dir / "report.html"
        if not path.is_file():
            return self._error(404, "No report yet", f"{path} does not exist yet")
        response = web.FileResponse(path, headers={"Content-Type": "text/html; charset=utf-8"})
        response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    async def plot(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request)
        name = request.match_info["name"]
        if not _PLOT.match(name) or name not in run.plots():
            raise web.HTTPNotFound(text=f"no plot {name}")
        return web.FileResponse(run.run_dir / "plots" / name)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("view.css", "view.js"):
            raise web.HTTPNotFound(text=f"no file {name}")
        return web.FileResponse(STATIC / name)

    async def status(self, request: web.Request) -> web.Response:
        body = {
            "text": self.v.live_text(),
            "busy": self.v.busy(),
            "runs": [
                {
                    "dir": str(r.run_dir),
                    "state": r.index.state,
                    "indexed": r.index.indexed,
                    "error": r.index.error,
                }
                for r in self.v.runs
            ],
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")


async def serve(
    dirs: list[Path],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    refresh_s: float = 2.0,
    fts: bool | None = None,
) -> None:
    """Serve the viewer until `stop` is set; every thread, index and socket is closed on
    the way out (Ctrl-C included)."""
    stop = stop or asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="valbench-view-") as tmp:
        viewer = Viewer(
            [RunIndex(d, Path(tmp) / f"run{i}.sqlite", fts=fts) for i, d in enumerate(dirs)],
            refresh_s=refresh_s,
        )
        viewer.check()
        viewer.start()
        try:
            bound: list[int] = []
            runner = web.AppRunner(
                make_app(viewer, host, lambda: bound[0]), access_log=None, handle_signals=False
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                await site.start()
                bound.append(runner.addresses[0][1])
                shown = f"[{host}]" if ":" in host else host
                if on_ready is not None:
                    on_ready(f"http://{shown}:{bound[0]}/")
                await stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await asyncio.to_thread(viewer.close)


class ViewerThread:
    """The viewer on its own thread and event loop (for tests and benchmarks): `url` once
    started; stopped, and everything closed, on exit."""

    def __init__(self, dirs: list[Path], **kwargs: Any) -> None:
        self.dirs, self.kwargs = dirs, kwargs
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="viewer", daemon=True)

    def _main(self) -> None:
        async def go() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await serve(self.dirs, on_ready=ready, stop=self._stop, **self.kwargs)

        try:
            asyncio.run(go())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> ViewerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every run is indexed (a test's first look must see every pair)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.url + "api/status", timeout=10) as r:
                status = orjson.loads(r.read())
            if all(run["state"] == "ready" for run in status["runs"]):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the viewer did not index its runs in {timeout} s: {status}")
