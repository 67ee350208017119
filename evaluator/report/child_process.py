"""The report's side process (started by evaluator.report.child.ReportChild).

    python -m evaluator.report.child_process RUN_DIR ROWS_FILE ORDER[,ORDER] [--nice]

stdin: `rows` once ROWS_FILE has been created; then, once it is complete, the
summary as one JSON line. stdout: the plots written. End of stdin before the
summary (the parent stopped or died): write nothing, exit 1. Once told the rows
file exists, it follows results.jsonl.tmp as the parent writes it (a pipe would fill
and stall the parent while the child is busy), converts the rows to Parquet, and
draws the plots once the summary arrives.
"""

from __future__ import annotations

import importlib
import os
import select
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from evaluator.report.child import ROWS_READY


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
        target=lambda: plots_module.update(mod=importlib.import_module("evaluator.report.plots"))
    )
    importer.start()
    from evaluator.report.parquet import PARQUET, ParquetSink  # after nice(): numpy and all

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
