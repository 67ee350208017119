"""Anthropic's Messages API: POST {base_url}/messages (base URL https://api.anthropic.com/v1).

Followed: the Messages API reference (docs.anthropic.com/en/api/messages),
"Versioning" (the `anthropic-version: 2023-06-01` header), "Errors"
(docs.anthropic.com/en/api/errors: `{"type": "error", "error": {"type", "message"}}`,
429 `rate_limit_error`, 529 `overloaded_error`), "Rate limits"
(docs.anthropic.com/en/api/rate-limits: `anthropic-ratelimit-*` headers with
RFC 3339 reset times, `retry-after`), "Extended thinking"
(docs.anthropic.com/en/docs/build-with-claude/extended-thinking), "Prompt
caching" (docs.anthropic.com/en/docs/build-with-claude/prompt-caching), "Web
search tool" (docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool:
tool type `web_search_20250305`, `web_search_result_location` citations) and
"Tool use" (docs.anthropic.com/en/docs/agents-and-tools/tool-use/overview:
`tool_choice`).

Choices the docs force:
- Sampling. Recent Claude models reject `temperature` and `top_p` together
  ("cannot both be specified"), so only `temperature` is sent (the spec's 0.1);
  `top_p` is dropped. With thinking on, neither is sent: thinking is not
  compatible with changed sampling.
- Thinking. `thinking: {type: enabled, budget_tokens}` needs a budget of at
  least 1024 tokens and below `max_tokens`, so `max_tokens` becomes the spec's
  limit plus the budget: the answer keeps the spec's room.
- JSON verdicts. Messages has no JSON-schema response format, so the judge gets
  one tool whose `input_schema` is the verdict schema, forced with
  `tool_choice: {type: tool}`: the API then answers with a `tool_use` block whose
  `input` is the verdict object, which `parse` returns as JSON text, so the
  verdict parser reads it like any other answer. A forced tool is chosen over a
  prefilled "{" because the tool's schema states every field and type to the
  model, and a prefill still lets it stop mid-object. Thinking does not allow a
  forced tool (nor a prefill), so with thinking (or web search, which the forced
  tool would shut out) the choice is `auto` and the rubric's own instruction to
  answer with one JSON object carries the format; `parse` accepts either form.
- Caching. The system prompt (the judge rubric, byte-identical for every pair) is
  one text block with `cache_control: {type: ephemeral}`, so the shared prefix
  (tools, then system) is cached. Prompts shorter than the model's minimum
  cacheable length (1024 tokens for most models) are simply not cached.
"""

from __future__ import annotations

from typing import Any

import orjson

from workers.base import CallFailure, Completion, ErrorClass, UnusableBody, clean_usage
from workers.client import EndpointConfig, HTTPClient
from workers.limits import RateLimitHeaders, wait_seconds
from workers.openai_compat import classify_http_error

ANTHROPIC_VERSION = "2023-06-01"
JSON_TOOL = "record_answer"  # the forced tool that carries structured (JSON) answers
WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


def build_body(
    model: str,
    system: str,
    user: str,
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    json_schema: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    options = options or {}
    budget = options.get("thinking_budget")
    web = bool(options.get("web_search"))
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens + (int(budget) if budget else 0),
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": user}],
    }
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": int(budget)}
    else:
        body["temperature"] = temperature  # top_p left out: see the module docstring
    tools: list[dict[str, Any]] = []
    if json_schema is not None:
        tools.append(
            {
                "name": JSON_TOOL,
                "description": "Record the answer as one JSON object with the given fields.",
                "input_schema": json_schema,
            }
        )
    if web:
        tools.append(dict(WEB_SEARCH_TOOL))
    if tools:
        body["tools"] = tools
    if json_schema is not None:
        forced = not budget and not web
        body["tool_choice"] = {"type": "tool", "name": JSON_TOOL} if forced else {"type": "auto"}
    return body


def _usage(raw: Any) -> dict[str, Any]:
    """The provider's usage plus prompt_tokens (every input token, cached or not) and
    completion_tokens, the names the rest of the evaluator counts by."""
    usage = dict(clean_usage(raw))  # a copy: names are added below
    parts = [
        usage.get(k)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    if isinstance(parts[0], int):
        usage["prompt_tokens"] = sum(p for p in parts if isinstance(p, int))
    if isinstance(usage.get("output_tokens"), int):
        usage["completion_tokens"] = usage["output_tokens"]
    return usage


_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "stop", "max_tokens": "length"}


def parse(body: dict[str, Any]) -> Completion | CallFailure:
    """A Completion from a Messages body, a final CallFailure, or an
    UnusableBody saying why it holds no answer."""
    if body.get("type") == "error":
        err = body.get("error") or {}
        kind = str(err.get("type") or "") if isinstance(err, dict) else ""
        msg = str(err.get("message") or "") if isinstance(err, dict) else ""
        status = ERROR_STATUS.get(kind, 400)
        return CallFailure(classify_http_error(status, msg, kind), f"{kind}: {msg}", status)
    content = body.get("content")
    if not isinstance(content, list):
        return UnusableBody("response has no content list")
    stop = body.get("stop_reason")
    texts: list[str] = []
    thinking: list[str] = []
    citations: list[dict[str, Any]] = []
    tool_input = None
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
            for c in block.get("citations") or []:
                if isinstance(c, dict) and c.get("url"):
                    citations.append(
                        {
                            "url": c["url"],
                            "title": c.get("title"),
                            "cited_text": c.get("cited_text"),
                        }
                    )
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use" and block.get("name") == JSON_TOOL:
            tool_input = block.get("input")
    if stop == "refusal":
        # Claude's safety classifiers stopped the answer: an answer that is a refusal, with
        # whatever text came before it (docs.anthropic.com/en/docs/test-and-evaluate/
        # strengthen-guardrails/handle-streaming-refusals).
        answer = "".join(texts)
    elif tool_input is not None:
        # The forced tool's input is the structured answer; any text beside it is preamble.
        answer = orjson.dumps(tool_input).decode()
    elif texts:
        answer = "".join(texts)
    elif stop == "max_tokens":
        answer = ""
    else:
        return UnusableBody("response has no text or tool answer")
    return Completion(
        content=answer,
        reasoning="\n\n".join(thinking) or None,
        finish_reason=_FINISH.get(stop, stop),
        usage=_usage(body.get("usage")),
        citations=citations,
    )


# Status codes of Anthropic's error types (its "Errors" page: docs.anthropic.com/en/api/errors),
# for error objects met without an HTTP status (in 200 bodies and batch results).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_message(raw: bytes) -> tuple[str, str]:
    """(message, error type) from an Anthropic error body, tolerant of any body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace"), ""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return raw[:300].decode("utf-8", "replace"), ""
    kind = str(err.get("type") or "")
    details = err.get("details")
    if isinstance(details, dict) and details.get("error_code"):
        kind = f"{kind} {details['error_code']}"  # e.g. enforced_spend_limit_reached
    return str(err.get("message") or ""), kind


def _retry_after(headers: Any) -> float | None:
    value = wait_seconds(headers.get("retry-after"))
    if value is not None:
        return value
    limits = RateLimitHeaders.parse_anthropic(headers)
    resets = [r for r in (limits.reset_requests_s, limits.reset_tokens_s) if r is not None]
    return max(resets) if resets else None


class MessagesWire:
    path = "/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def parse(self, body: dict[str, Any]) -> Completion | CallFailure:
        return parse(body)

    def error(self, status: int, raw: bytes) -> tuple[ErrorClass, str]:
        msg, kind = error_message(raw)
        return classify_http_error(status, msg, kind), f"HTTP {status}: {kind}: {msg}"

    def rate_limits(self, headers: Any) -> RateLimitHeaders:
        return RateLimitHeaders.parse_anthropic(headers)

    def retry_after(self, headers: Any) -> float | None:
        return _retry_after(headers)


class AnthropicClient(HTTPClient):
    def __init__(self, config: EndpointConfig) -> None:
        super().__init__(config, MessagesWire())
