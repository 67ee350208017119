"""What the checkpoint and the --reuse runs already hold for a pair's calls, looked up when
the pair is admitted: a completed call is never sent again (resume), and a failure of a final
class stands unless the user asked to retry those."""

from __future__ import annotations

from evaluator.run.outcomes import FINAL_FAILURES, RunStats
from evaluator.store import CallRecord, Store, StoreWriter


class StoredCalls:
    def __init__(
        self,
        store: Store,
        writer: StoreWriter,
        stats: RunStats,
        reuse: list[Store] | None,
        retry_failed: bool,
    ) -> None:
        self._store = store
        self._writer = writer
        self._stats = stats
        self._reuse = reuse or []
        self._retry_failed = retry_failed
        # A fresh run has nothing to look up: skip a query per admitted pair. (Each pair
        # is admitted once, so rows this session writes are never needed at admission.)
        self._lookup = store.has_calls()

    def for_pair(self, pair_id: int) -> dict[str, CallRecord]:
        """The pair's calls in this run's checkpoint, by content key."""
        return self._store.calls_for_pair(pair_id) if self._lookup else {}

    def known(self, records: dict[str, CallRecord], key: str) -> CallRecord | None:
        """The call's record here, or its completed copy from a --reuse run."""
        return records.get(key) or self.from_earlier_run(key)

    def from_earlier_run(self, key: str) -> CallRecord | None:
        """A completed call with the same key in a --reuse run: copied here, never re-sent."""
        for other in self._reuse:
            rec = other.get_call(key)
            if rec is not None and rec.status == "done":
                self._stats.calls_reused += 1
                self._writer.put(rec)
                return rec
        return None

    def final(self, rec: CallRecord) -> bool:
        """A recorded failure that stands on resume (unless the user asked to retry those)."""
        return (
            rec.status == "failed"
            and rec.error_class in FINAL_FAILURES
            and not self._retry_failed
        )
