"""The final report's side process: results.parquet and the plots, next to the main pass.

Importing pyarrow and matplotlib and drawing costs about 2 s of CPU, every run. A
child process does that work on another core. A run starts it with the session
(at low priority, so its imports use idle CPU, not the session's); the `report`
command starts it with the pass. Once told the rows file exists, it follows
results.jsonl.tmp as the parent writes it (a pipe would fill and stall the parent
while the child is busy), converts the rows to Parquet, and draws the plots once
the summary arrives. The parent waits only for whatever is left. If the child
cannot start or fails, the parent does the same work itself, so the outputs
never depend on it.

    python -m evaluator.report_child RUN_DIR ROWS_FILE ORDER[,ORDER] [--nice]

stdin: `rows` once ROWS_FILE has been created; then, once it is complete, the
summary as one JSON line. stdout: the plots written. End of stdin before the
summary (the parent stopped or died): write nothing, exit 1.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("evaluator")

PARQUET = "results.parquet"
ROWS_READY = b"rows\n"


class ReportChild:
    """The parent's handle on the side process (or on its in-process fallback)."""

    def __init__(
        self, run_dir: Path, rows: Path, orders: tuple[str, ...], *, background: bool = False
    ) -> None:
        """`rows`: where results.jsonl will be written; `background`: low CPU priority,
        for a child started while the run is still sending calls."""
        self.run_dir = run_dir
        self.orders = orders
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: it can never fill and block
        cmd = [sys.executable, "-m", "evaluator.report_child", str(run_dir), str(rows)]
        cmd += [",".join(orders), *(["--nice"] if background else [])]
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                # Its own session: a Ctrl-C on the terminal is the parent's to handle.
                start_new_session=True,
            )
        except OSError as exc:
            self._fail(f"cannot start it: {exc}")

    def _fail(self, why: str) -> None:
        log.warning("the report's side process failed (%s); finishing the report here", why)
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is not None:
            proc.kill()
            proc.communicate()

    def rows_ready(self) -> None:
        """The rows file has been created (and truncated): the child may follow it."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.write(ROWS_READY)
            self._proc.stdin.flush()
        except OSError as exc:
            self._fail(str(exc))

    def finish(self, summary: dict[str, Any]) -> dict[str, str]:
        """Once results.jsonl is complete: send the summary, wait for results.parquet and
        the plots. Returns the plots."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                out, _ = proc.communicate(
                    orjson.dumps(summary, option=orjson.OPT_NON_STR_KEYS) + b"\n", timeout=600
                )
                if proc.returncode == 0:
                    return orjson.loads(out)
                self._stderr.seek(0)
                tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:]
                self._fail(f"exit {proc.returncode}: {' '.join(tail)}")
            except (OSError, subprocess.TimeoutExpired, orjson.JSONDecodeError) as exc:
                self._proc = proc
                self._fail(type(exc).__name__)
        # Fallback: the same work here.
        write_parquet_from_jsonl(self.run_dir, self.orders)
        from evaluator.plots import write_plots

        return write_plots(self.run_dir, summary)

    def close(self) -> None:
        """Stop the child if the report was abandoned before finish()."""
        self._stop()
        self._stderr.close()


def write_parquet_from_jsonl(run_dir: Path, orders: tuple[str, ...]) -> None:
    from evaluator.report import ParquetSink

    sink = ParquetSink(run_dir / (PARQUET + ".tmp"), orders)
    with (run_dir / "results.jsonl").open("rb") as fh:
        for line in fh:
            sink.add(orjson.loads(line))
    sink.close(run_dir / PARQUET)


def _readline(stream: IO[bytes]) -> bytes:
    # Unbuffered, a byte at a time: a buffered read could swallow the summary too, and
    # select() would then never see it arrive.
    return stream.readline()


def _follow(rows: Path, done: IO[bytes]) -> Iterator[bytes]:
    """Lines of `rows` as the parent appends them, until `done` (stdin) is readable."""
    pending = b""
    try:
        fh = rows.open("rb")  # an open file survives the parent's rename of it
    except FileNotFoundError:
        # On a short run the parent can finish and rename ROWS (x.tmp -> x) before this
        # process, niced and importing, opens it: the renamed file is then complete.
        fh = rows.with_suffix("").open("rb")
    with fh:
        last = False
        while not last:
            chunk = fh.read(1 << 20)
            if not chunk:
                if not select.select([done], [], [], 0.05)[0]:
                    continue
                # The parent wrote and flushed every row before sending the summary.
                chunk, last = fh.read(), True
            *lines, pending = (pending + chunk).split(b"\n")
            yield from lines
    if pending:
        yield pending


def _main(argv: list[str]) -> int:
    run_dir, rows, orders = Path(argv[0]), Path(argv[1]), tuple(argv[2].split(","))
    if "--nice" in argv[3:]:
        os.nice(10)  # started beside a running session: take idle CPU, not the session's
    # matplotlib's import (the larger part) runs beside the Parquet conversion.
    plots_module: dict[str, Any] = {}
    importer = threading.Thread(
        target=lambda: plots_module.update(mod=__import__("evaluator.plots").plots)
    )
    importer.start()
    from evaluator.report import ParquetSink

    stdin = sys.stdin.buffer.raw  # unbuffered: see _readline
    if _readline(stdin) != ROWS_READY:
        return 1  # the run ended without a report (an error, or stopped at once)
    tmp = run_dir / (PARQUET + ".tmp")
    sink = ParquetSink(tmp, orders)
    for line in _follow(rows, stdin):
        sink.add(orjson.loads(line))
    summary_line = _readline(stdin)
    if not summary_line:
        tmp.unlink(missing_ok=True)
        return 1  # the parent gave up before the end: write nothing
    sink.close(run_dir / PARQUET)
    importer.join()
    written = plots_module["mod"].write_plots(run_dir, orjson.loads(summary_line))
    sys.stdout.buffer.write(orjson.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
