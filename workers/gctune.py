"""Garbage-collector settings for a run's session.

With CPython's defaults (a young collection every 700 net container allocations) a run
at 1,000+ calls in flight spends about a fifth of its event loop's time in the cyclic
garbage collector: every call's objects (request, response, futures, tasks) live for the
call's latency, so they survive young collections, are promoted, and are then scanned
again by the older generations, together with everything imported at start-up. The
benchmark's lognormal-latency scenario measured loop lag p99 of ~200 ms with the
defaults and ~40 ms with the collector quiet (benchmarks/README.md).

So, for the session only:
- `gc.freeze()` moves what exists at start-up (modules, config, the dataset index) into
  the permanent generation, which collections never scan;
- the young generation's threshold is raised, so a call's objects are usually freed by
  reference counting before a collection ever sees them.

Cycles are still collected (the collector is not disabled), so memory stays flat; the
full-size benchmark (345K calls) checks that. The previous settings are put back on exit,
whatever the path, so a caller embedding the evaluator keeps its own.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Young collections every 50,000 net allocations instead of 700: at ~3,000 calls/s that is
# a few per second, each over objects that are mostly still in flight.
YOUNG_THRESHOLD = 50_000


@contextmanager
def session_gc(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Quiet the cyclic collector while the block runs; restore its settings after."""
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.collect()  # free start-up garbage first, so that freezing keeps only live objects
    gc.freeze()
    gc.set_threshold(max(young_threshold, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if frozen_before == 0:  # leave a caller's own freeze alone
            gc.unfreeze()
