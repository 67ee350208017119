"""SIMULATED OpenAI Batch API: files (multipart upload, content) and batches (create,
get, list newest first), in the shapes of the client's references (workers.batch);
each line is answered by the server's own `respond()` once the batch is due."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from workers.simulated import wire
from workers.simulated.batch_state import BatchState, json_response
from workers.simulated.errors import error_body

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
_KIND_BY_URL = {wire.PATHS["chat"]: "chat", wire.PATHS["responses"]: "responses"}


class OpenAIBatches(BatchState):
    """OpenAI's files and batches endpoints over the shared batch state."""

    # -- OpenAI files -------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "chat")) is not None:
            return denied
        try:
            form = await request.post()
            purpose = str(form["purpose"])
            content = form["file"].file.read()  # type: ignore[union-attr]
            filename = form["file"].filename  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError):
            return self._error("chat", 400, "simulated: multipart with purpose and file expected")
        if purpose != "batch":
            return self._error("chat", 400, f"simulated: unsupported purpose {purpose!r}")
        if len(content) > OPENAI_MAX_BYTES:
            return self._error("chat", 400, "simulated: a batch input file is at most 200 MB")
        file_id = self._id("file")
        self.files[file_id] = (purpose, content)
        self.counts["files_uploaded"] += 1
        return json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",  # deprecated by OpenAI, still in its File object
            }
        )

    async def _file_content(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "chat")) is not None:
            return denied
        found = self.files.get(request.match_info["id"])
        if found is None:
            return self._error("chat", 404, "simulated: no such file")
        return web.Response(body=found[1], content_type="application/octet-stream")

    # -- OpenAI batches -----------------------------------------------------------------
    async def _openai_create(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "chat")) is not None:
            return denied
        try:
            req = orjson.loads(await request.read())
            file_id = req["input_file_id"]
            endpoint = req["endpoint"]
            window = req["completion_window"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._error("chat", 400, "simulated: input_file_id, endpoint, window needed")
        if endpoint not in _KIND_BY_URL:
            return self._error("chat", 400, f"simulated: unsupported endpoint {endpoint!r}")
        if window != "24h":
            return self._error("chat", 400, "simulated: completion_window must be 24h")
        found = self.files.get(file_id)
        if found is None or found[0] != "batch":
            return self._error("chat", 400, f"simulated: no batch input file {file_id!r}")
        lines: list[dict[str, Any]] = []
        try:
            for raw in found[1].splitlines():
                if raw.strip():
                    line = orjson.loads(raw)
                    if line["method"] != "POST" or line["url"] != endpoint:
                        raise ValueError("each line's url must be the batch's endpoint")
                    if not isinstance(line["body"], dict):
                        raise ValueError("each line's body must be an object")
                    lines.append(line)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self._error("chat", 400, f"simulated: bad input line: {exc}")
        ids = [line["custom_id"] for line in lines]
        if not lines or len(set(ids)) != len(ids):
            return self._error("chat", 400, "simulated: custom_ids must be present and unique")
        limit = self._limit(OPENAI_MAX_REQUESTS)
        if len(lines) > limit:
            return self._error("chat", 400, f"simulated: a batch holds at most {limit} requests")
        for line in lines:
            line["_sha"] = self._count(line["custom_id"], line["body"])
        now = time.time()
        batch_id = self._id("batch")
        self.openai[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "in_progress_at": int(now),
            "expires_at": int(now) + 86400,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": req.get("metadata") or {},
            "errors": None,
            "_created": now,
            "_lines": lines,
            "_done": False,
        }
        self.counts["batches_created"] += 1
        return json_response(self._public(self.openai[batch_id]))

    def _openai_advance(self, batch: dict[str, Any]) -> None:
        if batch["_done"] or not self._due(batch):
            return
        kind = _KIND_BY_URL[batch["endpoint"]]
        out: list[bytes] = []
        errors: list[bytes] = []
        expired = False
        for line in batch.pop("_lines"):
            cid = line["custom_id"]
            fault = self._fault(line["_sha"])
            if fault == "expire":
                expired = True
                self.counts["lines_expired"] += 1
                errors.append(
                    orjson.dumps(
                        {
                            "id": self._id("batch_req"),
                            "custom_id": cid,
                            "response": None,
                            "error": {
                                "code": "batch_expired",
                                "message": "simulated: not run before the batch expired",
                            },
                        }
                    )
                )
                continue
            if fault == "fail":
                self.counts["lines_failed"] += 1
                status, body = error_body(
                    kind, 500, "server_error", "simulated: this request failed inside the batch"
                )
            else:
                status, body = self.server.respond(kind, line["body"])
            record = {
                "id": self._id("batch_req"),
                "custom_id": cid,
                "response": {"status_code": status, "request_id": self._id("req"), "body": body},
                "error": None,
            }
            (out if status == 200 else errors).append(orjson.dumps(record))
        now = int(time.time())
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = self._id("file")
                self.files[file_id] = ("batch_output", b"\n".join(rows) + b"\n")
                batch[name] = file_id
        batch["request_counts"].update(completed=len(out), failed=len(errors))
        batch["status"] = "expired" if expired else "completed"
        batch["expired_at" if expired else "completed_at"] = now
        batch["_done"] = True
        self.counts["batches_ended"] += 1

    async def _openai_get(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "chat")) is not None:
            return denied
        batch = self.openai.get(request.match_info["id"])
        if batch is None:
            return self._error("chat", 404, "simulated: no such batch")
        self._openai_advance(batch)
        return json_response(self._public(batch))

    async def _openai_list(self, request: web.Request) -> web.Response:
        if (denied := self.server._unauthorized(request, "chat")) is not None:
            return denied
        ordered = sorted(self.openai.values(), key=lambda b: b["_created"], reverse=True)
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = ordered[:limit]
        for b in page:
            self._openai_advance(b)
        data = [self._public(b) for b in page]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(ordered) > limit,
            }
        )
