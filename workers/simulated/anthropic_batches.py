"""SIMULATED Anthropic Message Batches API: create, get, results (JSONL), list newest
first, in the shapes of the client's references (workers.batch); each request is
answered by the server's own `respond()` once the batch is due."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from aiohttp import web

from workers.simulated.batch_state import BatchState, iso_time, json_response
from workers.simulated.errors import error_body

ANTHROPIC_MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class AnthropicBatches(BatchState):
    """Anthropic's message batches endpoints over the shared batch state."""

    # -- Anthropic message batches ------------------------------------------------------
    async def _anthropic_create(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "messages")) is not None:
            return denied
        try:
            requests = orjson.loads(await request.read())["requests"]
            ids = [r["custom_id"] for r in requests]
            if not all(isinstance(r["params"], dict) for r in requests):
                raise ValueError("params must be objects")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self._error("messages", 400, f"simulated: requests expected: {exc}")
        if not requests or len(set(ids)) != len(ids):
            return self._error("messages", 400, "simulated: custom_ids must be present and unique")
        bad = [i for i in ids if not isinstance(i, str) or not CUSTOM_ID.match(i)]
        if bad:
            return self._error("messages", 400, f"simulated: invalid custom_id {bad[0]!r}")
        limit = self._limit(ANTHROPIC_MAX_REQUESTS)
        if len(requests) > limit:
            return self._error("messages", 400, f"simulated: at most {limit} requests per batch")
        for r in requests:
            r["_sha"] = self._count(r["custom_id"], r["params"])
        now = time.time()
        batch_id = self._id("msgbatch")
        self.anthropic[batch_id] = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(requests),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": None,
            "created_at": iso_time(now),
            "expires_at": iso_time(now + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
            "_created": now,
            "_requests": requests,
            "_results": b"",
            "_done": False,
        }
        self.counts["batches_created"] += 1
        return json_response(self._public(self.anthropic[batch_id]))

    def _anthropic_advance(self, batch: dict[str, Any], request: web.Request) -> None:
        if batch["_done"] or not self._due(batch):
            return
        counts = batch["request_counts"]
        rows = []
        for r in batch.pop("_requests"):
            fault = self._fault(r["_sha"])
            if fault == "expire":
                result: dict[str, Any] = {"type": "expired"}
                self.counts["lines_expired"] += 1
            else:
                if fault == "fail":
                    self.counts["lines_failed"] += 1
                    status, body = error_body(
                        "messages", 500, "server_error", "simulated: failed inside the batch"
                    )
                else:
                    status, body = self.server.respond("messages", r["params"])
                if status == 200:
                    result = {"type": "succeeded", "message": body}
                else:
                    result = {"type": "errored", "error": body}
            counts[result["type"]] += 1
            rows.append(orjson.dumps({"custom_id": r["custom_id"], "result": result}))
        counts["processing"] = 0
        batch["_results"] = b"\n".join(rows) + b"\n"
        batch["processing_status"] = "ended"
        batch["ended_at"] = iso_time(time.time())
        base = f"{request.scheme}://{request.host}"
        batch["results_url"] = f"{base}/v1/messages/batches/{batch['id']}/results"
        batch["_done"] = True
        self.counts["batches_ended"] += 1

    async def _anthropic_get(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "messages")) is not None:
            return denied
        batch = self.anthropic.get(request.match_info["id"])
        if batch is None:
            return self._error("messages", 404, "simulated: no such message batch")
        self._anthropic_advance(batch, request)
        return json_response(self._public(batch))

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "messages")) is not None:
            return denied
        batch = self.anthropic.get(request.match_info["id"])
        if batch is None or not batch["_done"]:
            return self._error("messages", 404, "simulated: no results for this batch (yet)")
        return web.Response(body=batch["_results"], content_type="application/binary")

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "messages")) is not None:
            return denied
        ordered = sorted(self.anthropic.values(), key=lambda b: b["_created"], reverse=True)
        limit = int(request.query.get("limit", "20"))
        page = ordered[:limit]
        for b in page:
            self._anthropic_advance(b, request)
        data = [self._public(b) for b in page]
        return json_response(
            {
                "data": data,
                "has_more": len(ordered) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
