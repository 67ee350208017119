"""What the simulated Batch APIs share: the batches and files one server holds (in
memory; gone when it stops), the counts tests read, and the faults injected per
request body on its first submission (see batches.py)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from workers.simulated.errors import error_body

if TYPE_CHECKING:
    from workers.simulated.server import SimulatedServer


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class BatchState:
    """Batch state of one simulated server (in memory; gone when it stops)."""

    def __init__(self, server: SimulatedServer) -> None:
        self.server = server
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (purpose, content)
        self.openai: dict[str, dict[str, Any]] = {}
        self.anthropic: dict[str, dict[str, Any]] = {}
        self.by_custom_id: Counter[str] = Counter()
        self.by_body: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._first_seen: dict[str, int] = {}  # body sha -> order of first submission
        self._seq = 0

    def stats(self, bodies: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.counts,
            "requests_submitted": sum(self.by_custom_id.values()),
            "distinct_bodies": len(self.by_body),
            "resubmitted_bodies": sum(1 for n in self.by_body.values() if n > 1),
            "pending": sum(
                1 for b in [*self.openai.values(), *self.anthropic.values()] if not b["_done"]
            ),
        }
        if bodies:
            out["bodies"] = dict(self.by_body)
            out["custom_ids"] = dict(self.by_custom_id)
        return out

    # -- shared -----------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_sim{self._seq:06d}"

    def _error(self, kind: str, status: int, message: str) -> web.Response:
        self.counts["rejected"] += 1
        status, body = error_body(kind, status, "invalid_request_error", message)
        return json_response(body, status)

    def _limit(self, provider_max: int) -> int:
        limit = self.server.config.batch_limit
        return min(provider_max, limit) if limit else provider_max

    def _count(self, custom_id: str, body: Any) -> str:
        sha = hashlib.sha256(orjson.dumps(body)).hexdigest()
        self.by_custom_id[custom_id] += 1
        self.by_body[sha] += 1
        self._first_seen.setdefault(sha, len(self._first_seen))
        return sha

    def _fault(self, sha: str) -> str | None:
        """'fail', 'expire' or None for a body; faults hit a body's first submission only."""
        if self.by_body[sha] > 1:
            return None
        c = self.server.config
        n = self._first_seen[sha] + 1
        if c.batch_fail_every and n % c.batch_fail_every == 0:
            return "fail"
        if c.batch_expire_every and n % c.batch_expire_every == 0:
            return "expire"
        return None

    def _due(self, batch: dict[str, Any]) -> bool:
        return time.time() >= batch["_created"] + self.server.config.batch_delay_s

    def _public(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}
