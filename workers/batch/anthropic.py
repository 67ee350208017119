"""Anthropic Message Batches on the wire (provider "anthropic").

Followed: the API reference
"Create a Message Batch", "Retrieve a Message Batch", "List Message Batches" and
"Retrieve Message Batch results" (docs.anthropic.com/en/api/creating-message-batches
and its siblings) and the batch processing guide
(docs.anthropic.com/en/docs/build-with-claude/batch-processing). POST
/messages/batches takes `{"requests": [{"custom_id", "params"}]}` (params: a
Messages request body); GET /messages/batches/{id} reports `processing_status`
(in_progress, canceling, ended) and `results_url`, a JSONL file of
`{"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored",
"error"} | {"type": "canceled"} | {"type": "expired"}}`. A batch holds at most
100,000 requests and 256 MB; a custom_id is 1-64 characters of [a-zA-Z0-9_-].
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import orjson

from workers.anthropic import ERROR_STATUS as ANTHROPIC_ERROR_STATUS
from workers.base import CallFailure, Completion, ErrorClass
from workers.batch.common import BatchAPI, BatchRef, BatchStatus, read_jsonl

__all__ = ["AnthropicBatchAPI"]


class AnthropicBatchAPI(BatchAPI):
    provider = "anthropic"
    list_path = "/messages/batches"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def line(self, custom_id: str, body: bytes) -> bytes:
        return b'{"custom_id":' + orjson.dumps(custom_id) + b',"params":' + body + b"}"

    async def create(self, lines: list[bytes], marker: str) -> BatchRef:
        payload = b'{"requests":[' + b",".join(lines) + b"]}"
        created = await self._json(
            "POST",
            self.base_url + "/messages/batches",
            data=payload,
            headers={"Content-Type": "application/json"},
        )
        return BatchRef(str(created["id"]))

    async def find(
        self, marker: str, since: float, n_requests: int, exclude: Collection[str]
    ) -> BatchRef | None:
        # Message batches carry no metadata. Every custom_id carries the marker, so a batch
        # created since the record with as many requests, and not known to be another
        # record's, is adopted provisionally: only results whose custom_id has our marker
        # are taken from it, and requests it turns out not to hold are submitted again once
        # it has ended (see workers.batch_client).
        page = await self._json("GET", self.base_url + "/messages/batches", params={"limit": "100"})
        for b in page.get("data") or []:
            if not isinstance(b, dict) or str(b.get("id")) in exclude:
                continue
            total = sum(v for v in (b.get("request_counts") or {}).values() if isinstance(v, int))
            if _rfc3339(b.get("created_at")) >= since - 60 and total == n_requests:
                return BatchRef(str(b["id"]))
        return None

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._json("GET", f"{self.base_url}/messages/batches/{batch_id}")
        state = str(b.get("processing_status") or "")
        return BatchStatus(batch_id, state, state == "ended", None, b)

    async def results(self, status: BatchStatus) -> list[tuple[str, Completion | CallFailure]]:
        if not status.raw.get("results_url"):
            return []
        # The documented path at the configured base URL, not `results_url` itself: the key
        # goes to no host but the one the run was given.
        raw = await self._http("GET", f"{self.base_url}/messages/batches/{status.id}/results")
        out: list[tuple[str, Completion | CallFailure]] = []
        for obj in read_jsonl(raw):
            cid = obj.get("custom_id")
            if isinstance(cid, str):
                out.append((cid, self._result(obj.get("result") or {})))
        return out

    def _result(self, result: dict[str, Any]) -> Completion | CallFailure:
        kind = result.get("type")
        if kind == "succeeded":
            return self._from_body(result.get("message"))
        if kind == "errored":
            err = result.get("error") or {}
            inner = err.get("error") if isinstance(err.get("error"), dict) else err
            status = ANTHROPIC_ERROR_STATUS.get(str(inner.get("type")), 500)
            return self._from_error(status, {"type": "error", "error": inner})
        # canceled / expired: the request never ran.
        return CallFailure(ErrorClass.TRANSIENT, f"the request was {kind} before it ran")


def _rfc3339(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
