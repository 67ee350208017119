"""The rows the checkpoint holds and the writer queues: calls, intents, pairs, batches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from evaluator.store.schema import COLUMNS


def pair_digest(row: bytes) -> bytes:
    """The identity of one pair's row (evaluator.fingerprint.record): 16 bytes of blake2b."""
    return hashlib.blake2b(row, digest_size=16).digest()


@dataclass(slots=True)
class CallRecord:
    key: str
    pair_id: int
    role: str  # gen_for | gen_against | judge_forward | judge_reverse
    status: str  # started | done | failed | interrupted
    body_sha: str
    content: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    error_class: str | None = None
    error: str | None = None
    latency_s: float | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    http_status: int | None = None


@dataclass(slots=True)
class BatchRow:
    """One provider batch as the store knows it (see the `batches` table)."""

    id: int
    marker: str
    provider: str
    stage: str
    state: str
    provider_batch_id: str | None
    input_file_id: str | None
    n_requests: int
    created_at: float


BATCH_COLUMNS = (
    "id, marker, provider, stage, state, provider_batch_id, input_file_id, n_requests, created_at"
)


@dataclass(frozen=True, slots=True)
class Intent:
    key: str
    pair_id: int
    role: str
    body_sha: str


@dataclass(frozen=True, slots=True)
class PairRow:
    """One admitted pair for the `pairs` table: its position and its row (uncompressed)."""

    pair_id: int
    seq: int
    row: bytes


@dataclass(frozen=True, slots=True)
class MetaValue:
    """A meta key to set in the writer's next commit (ordered with the calls around it)."""

    key: str
    value: Any


def record_from_row(row: tuple[Any, ...]) -> CallRecord:
    d = dict(zip(COLUMNS, row, strict=False))
    d.pop("updated_at")
    d["usage"] = orjson.loads(d["usage"]) if d["usage"] else {}
    d["citations"] = orjson.loads(d["citations"]) if d["citations"] else []
    return CallRecord(**d)
