"""OpenAI Batch on the wire (providers "openai" and "openai-responses").

Followed: the API
reference for batches (platform.openai.com/docs/api-reference/batch: create,
retrieve, list; the "request input" and "request output" objects) and files
(platform.openai.com/docs/api-reference/files: upload with `purpose=batch`,
retrieve content). The requests go in a JSONL file, one
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` per
line, uploaded with POST /files (multipart). POST /batches takes
`{input_file_id, endpoint, completion_window: "24h", metadata}`; GET
/batches/{id} reports `status` (validating, in_progress, finalizing, completed,
failed, expired, cancelling, cancelled) and, once done, `output_file_id` and
`error_file_id`, read with GET /files/{id}/content. Each result line is
`{"custom_id", "response": {"status_code", "body"} | null, "error": {"code",
"message"} | null}`; `error.code` is `batch_expired` or `batch_cancelled` for a
request that never ran. An input file holds at most 50,000 requests and 200 MB.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import aiohttp
import orjson

from workers.base import CallFailure, Completion, ErrorClass
from workers.batch.common import BatchAPI, BatchRef, BatchStatus, read_jsonl
from workers.client import EndpointUnreachable, Wire

__all__ = ["OpenAIBatchAPI"]


class OpenAIBatchAPI(BatchAPI):
    provider = "openai"
    list_path = "/batches"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(
        self, base_url: str, api_key: str | None, wire: Wire, endpoint: str, **kwargs: Any
    ) -> None:
        super().__init__(base_url, api_key, wire, **kwargs)
        self.endpoint = endpoint  # the line's `url` and the batch's `endpoint`

    def line(self, custom_id: str, body: bytes) -> bytes:
        # The body bytes are spliced in as they are: the batch sends exactly what an online
        # call would, and the body is not parsed and re-serialised per request.
        head = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": self.endpoint})
        return head[:-1] + b',"body":' + body + b"}"

    async def create(self, lines: list[bytes], marker: str) -> BatchRef:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file",
            b"\n".join(lines) + b"\n",
            filename=f"valbench-{marker}.jsonl",
            content_type="application/jsonl",
        )
        uploaded = await self._json("POST", self.base_url + "/files", data=form)
        file_id = str(uploaded.get("id") or "")
        if not file_id:
            raise EndpointUnreachable(f"{self.name}: the file upload returned no id")
        created = await self._json(
            "POST",
            self.base_url + "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": self.endpoint,
                "completion_window": "24h",
                "metadata": {"valbench_marker": marker},
            },
        )
        return BatchRef(str(created["id"]), file_id)

    async def find(
        self, marker: str, since: float, n_requests: int, exclude: Collection[str]
    ) -> BatchRef | None:
        after: str | None = None
        while True:
            params = {"limit": "100"}
            if after:
                params["after"] = after
            page = await self._json("GET", self.base_url + "/batches", params=params)
            data = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for b in data:
                if (b.get("metadata") or {}).get("valbench_marker") == marker:
                    return BatchRef(str(b["id"]), b.get("input_file_id"))
            # Newest first: once batches are older than the record (give or take clock
            # skew), ours is not there.
            oldest = min((b.get("created_at") or 0 for b in data), default=0)
            if not page.get("has_more") or not data or oldest < since - 300:
                return None
            after = str(data[-1]["id"])

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._json("GET", f"{self.base_url}/batches/{batch_id}")
        state = str(b.get("status") or "")
        failure = None
        if state == "failed":
            errors = (b.get("errors") or {}).get("data") or []
            text = "; ".join(
                f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)
            )
            # A full queue of enqueued tokens is a wait; anything else is the batch's input
            # being refused as a whole, which retrying cannot fix: the run stops.
            cls = ErrorClass.RATE_LIMIT if "limit" in text.lower() else ErrorClass.FATAL
            failure = CallFailure(cls, self.redact(f"the batch failed: {text or 'no reason'}"))
        ended = state in ("completed", "failed", "expired", "cancelled")
        return BatchStatus(batch_id, state, ended, failure, b)

    async def results(self, status: BatchStatus) -> list[tuple[str, Completion | CallFailure]]:
        out: list[tuple[str, Completion | CallFailure]] = []
        for name in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(name)
            if not file_id:
                continue
            raw = await self._http("GET", f"{self.base_url}/files/{file_id}/content")
            for obj in read_jsonl(raw):
                cid = obj.get("custom_id")
                if isinstance(cid, str):
                    out.append((cid, self._result(obj)))
        return out

    def _result(self, obj: dict[str, Any]) -> Completion | CallFailure:
        response = obj.get("response")
        error = obj.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            code = response["status_code"]
            if code == 200:
                return self._from_body(response.get("body"))
            return self._from_error(code, response.get("body") or {})
        if isinstance(error, dict):
            # The request never ran (batch_expired, batch_cancelled, request_timeout): try again.
            return CallFailure(
                ErrorClass.TRANSIENT,
                self.redact(f"{error.get('code')}: {error.get('message')}"),
            )
        return CallFailure(ErrorClass.TRANSIENT, "batch result line without response or error")
