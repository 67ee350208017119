"""SIMULATED provider Batch APIs: OpenAI's files + batches and Anthropic's Message Batches.

Shapes follow the same references as the client (workers.batch). Each line
of a batch is answered by the simulated server's own `respond()` (the logic of
the online endpoints, per request format), once the batch's delay has passed:

    OpenAI     POST /v1/files (multipart, purpose=batch), GET /v1/files/{id}/content,
               POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches (newest first)
    Anthropic  POST /v1/messages/batches, GET /v1/messages/batches/{id},
               GET /v1/messages/batches/{id}/results, GET /v1/messages/batches

Batches finish `batch_delay_s` after they are created (so a test can kill the
evaluator while one is pending). Injected failures, per distinct request body on
its first submission only (a resubmission of that body then succeeds):
`batch_fail_every` k fails every k-th one with a server error, `batch_expire_every`
k leaves every k-th one unrun (expired). `batch_limit` lowers the requests a
batch may hold, and a bigger batch is refused with a 400.

Counted for tests (in /sim/stats under "batches"): every request submitted, by
custom_id and by the sha256 of its body (the same bytes an online call sends), so
a test can prove no request was submitted twice.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from workers.simulated import wire

if TYPE_CHECKING:
    from workers.simulated.server import SimulatedServer

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KIND_BY_URL = {wire.PATHS["chat"]: "chat", wire.PATHS["responses"]: "responses"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class SimBatches:
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

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._openai_create)
        r.add_get("/v1/batches", self._openai_list)
        r.add_get("/v1/batches/{id}", self._openai_get)
        r.add_post("/v1/messages/batches", self._anthropic_create)
        r.add_get("/v1/messages/batches", self._anthropic_list)
        r.add_get("/v1/messages/batches/{id}", self._anthropic_get)
        r.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)

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
        status, body = wire.error_body(kind, status, "invalid_request_error", message)
        return _json(body, status)

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
        return _json(
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
        return _json(self._public(self.openai[batch_id]))

    def _public(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

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
                status, body = wire.error_body(
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
        return _json(self._public(batch))

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
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(ordered) > limit,
            }
        )

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
            "created_at": _iso(now),
            "expires_at": _iso(now + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
            "_created": now,
            "_requests": requests,
            "_results": b"",
            "_done": False,
        }
        self.counts["batches_created"] += 1
        return _json(self._public(self.anthropic[batch_id]))

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
                    status, body = wire.error_body(
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
        batch["ended_at"] = _iso(time.time())
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
        return _json(self._public(batch))

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
        return _json(
            {
                "data": data,
                "has_more": len(ordered) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
