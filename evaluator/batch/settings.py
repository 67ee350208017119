"""A batch stage's settings (from the run config) and what it did this session."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.base import RetryBudget


@dataclass(slots=True)
class BatchSettings:
    max_requests: int  # per batch (at most the provider's limit)
    max_bytes: int  # per batch (at most the provider's limit)
    capacity: int = 10_000  # calls waiting in open or submitted batches at once
    window_s: float = 300.0  # the longest a call waits in the open batch
    idle_s: float = 10.0  # submit once no new call has come for this long
    poll_s: float = 30.0
    max_attempts: int = 6
    budget: RetryBudget | None = None


@dataclass
class BatchStats:
    submitted: int = 0  # batches created in this session
    reattached: int = 0  # batches from an earlier session polled again
    requests: int = 0  # requests submitted in this session
    failed_lines: int = 0  # requests that came back failed
    resubmitted: int = 0  # failed requests put in a later batch
    pending: int = 0  # batches at the provider now
    ids: list[str] = field(default_factory=list)
