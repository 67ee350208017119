"""The final report's side process: results.parquet and the plots, next to the main pass.

Importing pyarrow and matplotlib and drawing costs about 2 s of CPU, every run. A
child process (evaluator.report.child_process) does that work on another core. A run
starts it with the session (at low priority, so its imports use idle CPU, not the
session's); the `report` command starts it with the pass. The parent tells it when the
rows file exists and, once results.jsonl is complete, sends the summary; it waits only
for whatever is left. If the child cannot start or fails, the parent does the same work
itself, so the outputs never depend on it. This module is the parent's handle.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("evaluator")

ROWS_READY = b"rows\n"
CHILD_MODULE = "evaluator.report.child_process"


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
        cmd = [sys.executable, "-m", CHILD_MODULE, str(run_dir), str(rows)]
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
        from evaluator.report.parquet import write_parquet_from_jsonl

        write_parquet_from_jsonl(self.run_dir, self.orders)
        from evaluator.report.plots import write_plots

        return write_plots(self.run_dir, summary)

    def close(self) -> None:
        """Stop the child if the report was abandoned before finish()."""
        self._stop()
