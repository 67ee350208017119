"""The throughput benchmark's driver and report: scenarios in order, then one Markdown text.

The report's head names the host, the command and a hash of the evaluator's and workers'
sources (which code the figures belong to), then a table of every scenario's targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .children import REPO, Children, check_imports
from .measure import Bench
from .tables import Section, table

Scenario = Callable[[Bench, argparse.Namespace, Path], Section]


def log(msg: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def source_digest() -> str:
    """A short hash of the evaluator's and workers' sources: which code the figures belong to."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((*REPO.glob("evaluator/**/*.py"), *REPO.glob("workers/**/*.py"))):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _host() -> str:
    """CPUs usable by this process (of the host's), CPU model, OS."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0))  # `taskset -c 0,1` shows as 2 of the host's CPUs
    cpus = f"{usable} CPUs" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} CPUs"
    return f"{cpus} ({model or platform.machine()}), {platform.system()}"


def run_benchmark(args: argparse.Namespace, command: str, scenarios: dict[str, Scenario]) -> str:
    """Run args.scenarios in order; the report: a head, the targets, one section each."""
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone()
    digest = source_digest()
    tmp = Path(tempfile.mkdtemp(prefix="valbench-throughput-"))
    sections: list[Section] = []
    try:
        with Children() as children:  # every server and client stopped, on every path
            check_imports(tmp, need_openai="zero" in args.scenarios)
            bench = Bench(children, tmp, timeout=args.run_timeout)
            for name in args.scenarios:
                t = time.perf_counter()
                log(f"scenario {name}: starting")
                sections.append(scenarios[name](bench, args, tmp))
                log(f"scenario {name}: done in {time.perf_counter() - t:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sources = f"{digest} (from {REPO})"
    if source_digest() != digest:
        sources += " (WARNING: evaluator/workers sources changed during the run)"
    head = [
        f"Run started {started_at.strftime('%Y-%m-%d %H:%M:%S %Z')} on {_host()}; python "
        f"{platform.python_version()}; command `{command}`; scenarios {','.join(args.scenarios)}; "
        f"benchmark wall time {time.perf_counter() - started:.0f} s; evaluator/workers sources "
        f"{sources}. All servers are the SIMULATED backend (`workers.simulated`), all data "
        "synthetic.",
        "",
        "#### Targets",
        "",
    ]
    head += table(
        ["target", "measured", "verdict"],
        ["---", "---", "---"],
        [list(t) for s in sections for t in s.targets],
    )
    return "\n".join(head) + "\n\n" + "\n".join(s.render() for s in sections)
