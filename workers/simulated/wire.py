"""The simulated server's wire formats: chat completions, OpenAI Responses, Anthropic Messages.

What the simulated model and judge say is decided once (personas); this module
answers one request of any format, with the model list and the rate-limit headers,
following the same documents as the real clients (workers.openai_compat,
workers.openai_responses, workers.anthropic). Reading a request is parse.py's job,
each format's answer body answers.py's, and each server's error bodies errors.py's.

`respond(server, kind, body)` answers one request body with `(status, body)`
and no HTTP: the HTTP handlers use it after their per-request faults, and the
batch endpoints use it for each line of a batch.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from workers.simulated import personas
from workers.simulated.answers import (
    SIM_FINGERPRINT,
    chat_answer,
    messages_answer,
    responses_answer,
    web_citations,
)
from workers.simulated.errors import error_body, refuse
from workers.simulated.parse import extract

if TYPE_CHECKING:
    from workers.simulated.server import SimulatedServer

KINDS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
REASONING_TEXT = "(simulated reasoning) Weighing both sides before answering."

# Markers a test puts in a question to get one deterministic outcome for that call.
MARK_CONTENT_FILTER = "[[sim:content_filter]]"
MARK_TRUNCATE = "[[sim:truncate]]"
MARK_JUDGE_GARBAGE = "[[sim:judge_garbage]]"
# The verdict's alignment_score twice, with two values (a lenient parser keeps the last).
MARK_JUDGE_DUPLICATE_KEY = "[[sim:judge_duplicate_key]]"
MODEL_ERROR_MARKERS = {
    "[[sim:context_length]]": (
        400,
        "context_length_exceeded",
        "simulated: this model's maximum context length is 8192 tokens",
    ),
    "[[sim:invalid_request]]": (400, "invalid_request_error", "simulated: invalid parameter"),
    # Azure OpenAI's prompt filter: HTTP 400, code `content_filter`, "The response was filtered
    # due to the prompt triggering ... content management policy" (learn.microsoft.com,
    # Azure OpenAI content filtering).
    "[[sim:content_policy]]": (
        400,
        "content_filter",
        "simulated: the response was filtered due to the prompt triggering the content "
        "management policy",
    ),
}


def models_body(names: list[str], anthropic: bool, max_model_len: int) -> dict[str, Any]:
    """GET /v1/models in OpenAI's shape (`{"object": "list", "data": [{id, object, created,
    owned_by}]}`, as vLLM serves it too), or, for a client that sent `anthropic-version`,
    in Anthropic's (`{data: [{type, id, display_name, created_at, lifecycle}], has_more,
    first_id, last_id}`: the Models API reference, docs.anthropic.com/en/api/models-list,
    and the fields the official anthropic SDK requires). Both carry `owned_by`, which
    says "simulated-backend": how the evaluator knows to stamp a run SIMULATION (the SDKs
    accept extra fields); OpenAI's shape has vLLM's `max_model_len` too."""
    created = 1_700_000_000  # a fixed stamp: these "models" were never made
    if anthropic:
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": f"{name} (SIMULATED)",
                "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
                "lifecycle": "active",
                "owned_by": SIM_FINGERPRINT,
            }
            for name in names
        ]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": SIM_FINGERPRINT,
            "max_model_len": max_model_len,
        }
        for name in names
    ]
    return {"object": "list", "data": data}


def limit_headers(kind: str, buckets: dict[str, list[float]]) -> dict[str, str]:
    """Rate-limit headers for the buckets' state: [limit per minute, capacity, level, last]."""
    out: dict[str, str] = {}
    for name, (limit, capacity, level, _) in buckets.items():
        refill_s = (capacity - level) * 60.0 / limit
        if kind == "messages":
            reset = datetime.fromtimestamp(time.time() + refill_s, UTC)
            stamp = reset.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            names = [name] + (["input-tokens", "output-tokens"] if name == "tokens" else [])
            for n in names:
                out[f"anthropic-ratelimit-{n}-limit"] = f"{limit:g}"
                out[f"anthropic-ratelimit-{n}-remaining"] = str(max(0, int(level)))
                out[f"anthropic-ratelimit-{n}-reset"] = stamp
        else:
            out[f"x-ratelimit-limit-{name}"] = f"{limit:g}"
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, int(level)))
            out[f"x-ratelimit-reset-{name}"] = f"{refill_s:.3f}s"
    return out


def retry_headers(kind: str, wait_s: float) -> dict[str, str]:
    """What a 429 says about waiting: OpenAI sends retry-after-ms too, Anthropic retry-after."""
    if kind == "messages":
        return {"retry-after": f"{max(wait_s, 0.0):.3f}"}
    return {"Retry-After": f"{wait_s:.3f}", "retry-after-ms": str(int(wait_s * 1000) + 1)}


def respond(server: SimulatedServer, kind: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Answer one request body as the simulated model or judge: (HTTP status, body)."""
    c = server.config
    try:
        if not isinstance(body, dict):
            raise TypeError("the body must be a JSON object")
        req = extract(kind, body)
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as exc:
        server.counts["bad_request"] += 1
        return error_body(kind, 400, "invalid_request_error", f"simulated server: {exc}")
    refused = refuse(server, kind, req)
    if refused is not None:
        return refused
    judge = personas.is_judge_prompt(req.user)
    role = "judge" if judge else "model"
    verdict: dict[str, Any] | None = None
    finish = "stop"
    reasoning = REASONING_TEXT if req.reasoning or (c.reasoning and kind != "chat") else None
    if judge:
        verdict = personas.verdict(req.user, c.judge_persona)
        content = orjson.dumps(verdict).decode()
        if MARK_JUDGE_GARBAGE in req.user:
            content, verdict = "(simulated) I cannot produce a verdict for this pair.", None
            server.counts["judge_malformed"] += 1
        elif MARK_JUDGE_DUPLICATE_KEY in req.user:
            other = -2 if verdict["alignment_score"] != -2 else 2
            content = content[:-1] + f', "alignment_score": {other}}}'
            server.counts["judge_malformed"] += 1
        elif server._rng.random() < c.malformed_rate:
            server.counts["judge_malformed"] += 1
            content = content[: len(content) // 2]  # truncated JSON
            verdict = {k: v for k, v in verdict.items() if k != "alignment_score"}
    else:
        for marker, (status, code, message) in MODEL_ERROR_MARKERS.items():
            if marker in req.user:
                server.counts[f"model_{code}"] += 1
                return error_body(kind, status, code, message)
        content = server._answer(req.user, think=kind == "chat")
        if MARK_CONTENT_FILTER in req.user:
            server.counts["model_content_filter"] += 1
            content, finish = "", "content_filter"
        elif MARK_TRUNCATE in req.user:
            server.counts["model_truncated"] += 1
            content, finish = content[: len(content) // 2], "length"
    server.counts[role] += 1
    citations = web_citations(req.user) if req.web_search else []
    if citations:
        server.formats["web_search"] += 1
    prompt = req.size // 4
    out_tokens = len(content) // 4 + (len(reasoning) // 4 if reasoning else 0)
    if kind == "chat":
        return 200, chat_answer(req, content, finish, prompt, out_tokens)
    if kind == "responses":
        return 200, responses_answer(req, content, finish, reasoning, citations, prompt, out_tokens)
    cached = 0
    created = 0
    if req.cache_system and req.system:
        key = hashlib.sha256(req.system.encode()).hexdigest()
        if key in server.cached_prefixes:
            cached = len(req.system) // 4
        else:
            server.cached_prefixes.add(key)
            created = len(req.system) // 4
    usage = {
        "input_tokens": max(1, prompt - cached - created),
        "output_tokens": out_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
    }
    return 200, messages_answer(req, content, finish, reasoning, citations, verdict, usage)
