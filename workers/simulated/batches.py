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

from aiohttp import web

from workers.simulated.anthropic_batches import AnthropicBatches
from workers.simulated.openai_batches import OpenAIBatches


class SimBatches(OpenAIBatches, AnthropicBatches):
    """Batch state of one simulated server (in memory; gone when it stops), with the
    routes of both providers' Batch APIs (openai_batches.py, anthropic_batches.py)."""

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
