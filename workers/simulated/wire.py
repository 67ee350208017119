"""The simulated server's wire formats: chat completions, OpenAI Responses, Anthropic Messages.

What the simulated model and judge say is decided once (personas); this module
reads each format's request and writes each format's answer, error body and
rate-limit headers, following the same documents as the real clients
(workers.openai_compat, workers.openai_responses, workers.anthropic).

`respond(server, kind, body)` answers one request body with `(status, body)`
and no HTTP: the HTTP handlers use it after their per-request faults, and the
batch endpoints use it for each line of a batch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from workers.simulated import personas

if TYPE_CHECKING:
    from workers.simulated.server import SimulatedServer

KINDS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
SIM_FINGERPRINT = "simulated-backend"
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

# Our error codes as Anthropic's error types and statuses (its "Errors" page).
_ANTHROPIC_ERRORS = {
    "invalid_api_key": (401, "authentication_error"),
    "insufficient_quota": (402, "billing_error"),
    "rate_limit_exceeded": (429, "rate_limit_error"),
    "server_error": (529, "overloaded_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "model_not_found": (404, "not_found_error"),
    "invalid_request_error": (400, "invalid_request_error"),
}


@dataclass
class SimRequest:
    """What the simulation needs of a request, whatever its format."""

    model: str
    system: str
    user: str
    max_tokens: int
    reasoning: bool = False  # Responses `reasoning` / Messages `thinking` asked for
    web_search: bool = False
    forced_tool: str | None = None  # Messages: the tool named by tool_choice
    cache_system: bool = False  # Messages: system block marked cache_control
    size: int = 0  # request bytes, for token counts
    tools: list[str] = field(default_factory=list)
    # Responses: the request's tools and tool_choice, which the response object repeats.
    tool_defs: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"


def _text(content: Any) -> str:
    """A message's text: a string, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    raise TypeError("content must be text or a list of blocks")


def extract(kind: str, body: dict[str, Any]) -> SimRequest:
    """Raises KeyError/TypeError/ValueError/StopIteration for a body the format does not allow."""
    size = len(orjson.dumps(body))
    if kind == "chat":
        messages = body["messages"]
        user = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        return SimRequest(
            str(body.get("model", "simulated")),
            _text(system),
            _text(user),
            int(body.get("max_tokens") or 0),
            web_search="web_search_options" in body,
            size=size,
        )
    if kind == "responses":
        raw = body["input"]
        if isinstance(raw, list):  # a list of input messages: the last user turn
            raw = next(m["content"] for m in reversed(raw) if m.get("role") == "user")
            if isinstance(raw, list):
                raw = "".join(p.get("text", "") for p in raw if isinstance(p, dict))
        if not isinstance(raw, str):
            raise TypeError("input must be text")
        tools = [t.get("type") for t in body.get("tools") or []]
        return SimRequest(
            str(body["model"]),
            str(body.get("instructions") or ""),
            raw,
            int(body.get("max_output_tokens") or 0),
            reasoning=isinstance(body.get("reasoning"), dict),
            web_search=any(str(t).startswith("web_search") for t in tools),
            size=size,
            tool_defs=list(body.get("tools") or []),
            tool_choice=body.get("tool_choice") or "auto",
        )
    if kind == "messages":
        max_tokens = body["max_tokens"]  # required by the Messages API
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer")
        messages = body["messages"]
        user = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        system = body.get("system") or ""
        cache = isinstance(system, list) and any(
            isinstance(b, dict) and b.get("cache_control") for b in system
        )
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
                raise ValueError("thinking.budget_tokens must be >= 1024 and < max_tokens")
            if "temperature" in body or "top_p" in body:
                raise ValueError("thinking is not compatible with temperature or top_p")
        if "temperature" in body and "top_p" in body:
            raise ValueError("`temperature` and `top_p` cannot both be specified for this model")
        choice = body.get("tool_choice") or {}
        forced = choice.get("name") if choice.get("type") == "tool" else None
        tools = [str(t.get("name") or t.get("type")) for t in body.get("tools") or []]
        if forced is not None and forced not in tools:
            raise ValueError(f"tool_choice names an unknown tool {forced!r}")
        return SimRequest(
            str(body["model"]),
            _text(system),
            _text(user),
            max_tokens,
            reasoning=isinstance(thinking, dict) and thinking.get("type") == "enabled",
            web_search=any(
                str(t.get("type", "")).startswith("web_search") for t in body.get("tools") or []
            ),
            forced_tool=forced,
            cache_system=cache,
            size=size,
            tools=tools,
        )
    raise ValueError(f"unknown request kind {kind!r}")


def error_body(kind: str, status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    """An error in the format's own shape (Anthropic's may change the status: 529, 402)."""
    if kind == "messages":
        status, etype = _ANTHROPIC_ERRORS.get(code, (status, "invalid_request_error"))
        if code == "context_length_exceeded":
            message = "prompt is too long: 9000 tokens > 8192 maximum (simulated)"
        body = {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": f"req_sim_{time.monotonic_ns()}",
        }
        return status, body
    return status, {"error": {"message": message, "type": code, "code": code}}


# -- what a real server refuses before generating anything ----------------------------
# The bodies below copy the shapes real servers send, so that clients (ours and the
# official SDKs) meet the simulated failures exactly as they would meet the real ones:
# - vLLM's OpenAI-compatible server: `ErrorResponse{error: ErrorInfo{message, type,
#   param, code}}` with `type` the exception name and `code` the HTTP status
#   (vllm/entrypoints/openai/protocol.py); an unknown model is 404 NotFoundError "The model
#   `X` does not exist." (serving_engine `_check_model`); a prompt over the window and a
#   max_tokens that does not fit are 400 BadRequestError with the messages quoted in
#   `_VLLM_CONTEXT` / `_VLLM_MAX_TOKENS`; an unknown path is FastAPI's 404 {"detail": "Not
#   Found"}.
# - OpenAI (platform.openai.com/docs/guides/error-codes): 404 `model_not_found` "The model
#   `X` does not exist or you do not have access to it.", 400 `context_length_exceeded`,
#   400 "max_tokens is too large", and 404 "Invalid URL (POST /path)" for an unknown path;
#   errors are {"error": {message, type, param, code}}.
# - Anthropic (docs.anthropic.com/en/api/errors): {"type": "error", "error": {type,
#   message}, "request_id"}; 404 not_found_error ("model: X"), 400 invalid_request_error
#   "prompt is too long: N tokens > M maximum" and "max_tokens: X > Y, which is the maximum
#   allowed number of output tokens for MODEL".
FLAVORS = ("vllm", "openai")
_VLLM_CONTEXT = (
    "This model's maximum context length is {window} tokens. However, your request has "
    "{prompt} input tokens. Please reduce the length of the input messages."
)
_VLLM_MAX_TOKENS = (
    "'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum "
    "context length is {window} tokens and your request has {prompt} input tokens "
    "({asked} > {window} - {prompt})."
)


def _openai_error(status: int, message: str, etype: str, param: Any, code: Any) -> tuple:
    return status, {"error": {"message": message, "type": etype, "param": param, "code": code}}


def _anthropic_error(status: int, etype: str, message: str) -> tuple[int, dict[str, Any]]:
    body = {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": f"req_sim_{time.monotonic_ns()}",
    }
    return status, body


def refuse(server: SimulatedServer, kind: str, req: SimRequest) -> tuple | None:
    """(status, body) when the server would refuse this request before generating: a model
    it does not serve, a prompt over its context window, or max_tokens over its limit."""
    c = server.config
    flavor = c.flavor if kind != "messages" else "anthropic"
    if not c.any_model and req.model not in server.served_names:
        server.counts["unknown_model"] += 1
        if flavor == "anthropic":
            return _anthropic_error(404, "not_found_error", f"model: {req.model}")
        if flavor == "openai":
            return _openai_error(
                404,
                f"The model `{req.model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                None,
                "model_not_found",
            )
        return _openai_error(
            404, f"The model `{req.model}` does not exist.", "NotFoundError", None, 404
        )
    prompt, asked, window = req.size // 4, req.max_tokens, c.max_model_len
    if flavor == "vllm":
        if prompt >= window:
            server.counts["context_length"] += 1
            message = _VLLM_CONTEXT.format(window=window, prompt=prompt)
            return _openai_error(400, message, "BadRequestError", None, 400)
        if asked and prompt + asked > window:
            server.counts["max_tokens_too_large"] += 1
            message = _VLLM_MAX_TOKENS.format(asked=asked, window=window, prompt=prompt)
            return _openai_error(400, message, "BadRequestError", None, 400)
        return None
    limit = c.max_output_tokens
    if flavor == "anthropic":
        if prompt > window:
            server.counts["context_length"] += 1
            message = f"prompt is too long: {prompt} tokens > {window} maximum"
            return _anthropic_error(400, "invalid_request_error", message)
        if limit is not None and asked > limit:
            server.counts["max_tokens_too_large"] += 1
            message = (
                f"max_tokens: {asked} > {limit}, which is the maximum allowed number of "
                f"output tokens for {req.model}"
            )
            return _anthropic_error(400, "invalid_request_error", message)
        return None
    if limit is not None and asked > limit:
        server.counts["max_tokens_too_large"] += 1
        message = (
            f"max_tokens is too large: {asked}. This model supports at most {limit} "
            f"completion tokens, whereas you provided {asked}."
        )
        return _openai_error(400, message, "invalid_request_error", "max_tokens", None)
    if prompt + asked > window:
        server.counts["context_length"] += 1
        message = (
            f"This model's maximum context length is {window} tokens. However, your "
            f"messages resulted in {prompt + asked} tokens. Please reduce the length of "
            "the messages."
        )
        return _openai_error(
            400, message, "invalid_request_error", "messages", "context_length_exceeded"
        )
    return None


def not_found(flavor: str, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """The 404 a real server sends for a path it does not serve (a base URL without /v1)."""
    if path.rstrip("/").endswith(("/messages", "/messages/batches")):
        return _anthropic_error(404, "not_found_error", "Not Found")
    if flavor == "openai":
        message = f"Invalid URL ({method} {path})"
        return _openai_error(404, message, "invalid_request_error", None, None)
    return 404, {"detail": "Not Found"}


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


def _citations(question: str) -> list[dict[str, str]]:
    tag = hashlib.sha256(question.encode()).hexdigest()[:10]
    return [
        {
            "url": f"https://example.invalid/simulated-source/{tag}",
            "title": "SIMULATED search result (not a real page)",
            "cited_text": "Simulated text standing in for a cited passage.",
        }
    ]


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
    citations = _citations(req.user) if req.web_search else []
    if citations:
        server.formats["web_search"] += 1
    prompt = req.size // 4
    out_tokens = len(content) // 4 + (len(reasoning) // 4 if reasoning else 0)
    if kind == "chat":
        return 200, _chat(req, content, finish, prompt, out_tokens)
    if kind == "responses":
        return 200, _responses(req, content, finish, reasoning, citations, prompt, out_tokens)
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
    return 200, _messages(req, content, finish, reasoning, citations, verdict, usage)


def _chat(req: SimRequest, content: str, finish: str, prompt: int, out: int) -> dict[str, Any]:
    return {
        "id": f"simcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": SIM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
    }


def _responses(req, content, finish, reasoning, citations, prompt, out) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append(
            {
                "id": f"rs_sim_{time.monotonic_ns()}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": reasoning}],
            }
        )
    if citations:
        output.append(
            {
                "id": f"ws_sim_{time.monotonic_ns()}",
                "type": "web_search_call",
                "status": "completed",
                "action": {"type": "search", "query": req.user[:80]},
            }
        )
    annotations = [
        {
            "type": "url_citation",
            "url": c["url"],
            "title": c["title"],
            "start_index": 0,
            "end_index": len(content),
        }
        for c in citations
    ]
    if finish != "content_filter":
        output.append(
            {
                "id": f"msg_sim_{time.monotonic_ns()}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": content, "annotations": annotations}],
            }
        )
    status, details = "completed", None
    if finish == "length":
        status, details = "incomplete", {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        status, details = "incomplete", {"reason": "content_filter"}
    return {
        "id": f"resp_sim_{time.monotonic_ns()}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "incomplete_details": details,
        "error": None,
        "model": req.model,
        "output": output,
        # Echoes of the request that the Responses object always carries (the official
        # openai SDK's Response type requires them).
        "parallel_tool_calls": True,
        "tool_choice": req.tool_choice,
        "tools": req.tool_defs,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": len(reasoning) // 4 if reasoning else 0},
            "total_tokens": prompt + out,
        },
        "metadata": {"simulated": "true"},
    }


def _messages(req, content, finish, reasoning, citations, verdict, usage) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": "simulated"})
    if citations:
        tool_id = f"srvtoolu_sim_{time.monotonic_ns()}"
        blocks.append(
            {
                "type": "server_tool_use",
                "id": tool_id,
                "name": "web_search",
                "input": {"query": req.user[:80]},
            }
        )
        blocks.append(
            {
                "type": "web_search_tool_result",
                "tool_use_id": tool_id,
                "content": [
                    {
                        "type": "web_search_result",
                        "url": c["url"],
                        "title": c["title"],
                        "encrypted_content": "simulated",
                    }
                    for c in citations
                ],
            }
        )
        # Server tool counts as the Messages usage object has them (the anthropic SDK
        # requires both).
        usage = {**usage, "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0}}
    stop = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}[finish]
    if verdict is not None and req.forced_tool:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_sim_{time.monotonic_ns()}",
                "name": req.forced_tool,
                "input": verdict,
            }
        )
        stop = "tool_use"
    elif finish != "content_filter":
        block: dict[str, Any] = {"type": "text", "text": content}
        if citations:
            block["citations"] = [
                {
                    "type": "web_search_result_location",
                    "url": c["url"],
                    "title": c["title"],
                    "cited_text": c["cited_text"],
                    "encrypted_index": "simulated",
                }
                for c in citations
            ]
        blocks.append(block)
    return {
        "id": f"msg_sim_{time.monotonic_ns()}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
