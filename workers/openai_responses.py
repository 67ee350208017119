"""OpenAI's Responses API: POST {base_url}/responses.

Followed: the API reference "Create a model response"
(platform.openai.com/docs/api-reference/responses/create), the reasoning guide
(platform.openai.com/docs/guides/reasoning: `reasoning.effort`, `reasoning.summary`),
the web search guide (platform.openai.com/docs/guides/tools-web-search: tool type
`web_search`, `url_citation` annotations) and the structured outputs guide
(platform.openai.com/docs/guides/structured-outputs: `text.format` with
`type: "json_schema"`, `name`, `schema`, `strict`).

Request: the system prompt is `instructions`, the question is `input`, the
answer limit is `max_output_tokens` (it covers reasoning tokens too).
Reasoning models reject `temperature` and `top_p`, so when a reasoning effort
is set they are left out and the spec's sampling cannot be applied; without
one they are sent as the spec gives them.

Response: `output` is a list of items. `message` items hold `output_text`
parts (the answer, with `annotations` for citations) or a `refusal` part;
`reasoning` items hold a `summary` list of `summary_text` parts. `status` is
"completed", "incomplete" (`incomplete_details.reason`: "max_output_tokens" or
"content_filter") or "failed" (with `error`). Errors and rate-limit headers are
the same as chat completions'.
"""

from __future__ import annotations

from typing import Any

from workers.base import CallFailure, Completion, ErrorClass, UnusableBody, clean_usage
from workers.client import EndpointConfig, HTTPClient
from workers.openai_compat import OpenAIErrors, classify_http_error


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
    effort = options.get("reasoning_effort")
    body: dict[str, Any] = {"model": model, "instructions": system, "input": user}
    if effort:
        # Reasoning models reject sampling parameters; ask for a summary of the reasoning.
        body["reasoning"] = {"effort": effort, "summary": "auto"}
        extra = options.get("thinking_budget") or 0  # room for reasoning tokens
        body["max_output_tokens"] = max_tokens + int(extra)
    else:
        body["temperature"] = temperature
        body["top_p"] = top_p
        body["max_output_tokens"] = max_tokens
    if options.get("web_search"):
        body["tools"] = [{"type": "web_search"}]
    if json_schema is not None:
        body["text"] = {
            "format": {
                "type": "json_schema",
                "name": json_schema.get("title") or "structured_output",
                "schema": json_schema,
                "strict": True,
            }
        }
    body["store"] = False  # no server-side state is needed: every call stands alone
    return body


def _usage(raw: Any) -> dict[str, Any]:
    usage = dict(clean_usage(raw))  # a copy: names are added below
    tin, tout = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(tin, int):
        usage["prompt_tokens"] = tin
    if isinstance(tout, int):
        usage["completion_tokens"] = tout
    return usage


def parse(body: dict[str, Any]) -> Completion | CallFailure:
    """A Completion from a Responses body, a final CallFailure, or an
    UnusableBody saying why it holds no answer."""
    status = body.get("status")
    output = body.get("output")
    if status == "failed":
        err = body.get("error") or {}
        code = str(err.get("code") or "") if isinstance(err, dict) else ""
        msg = str(err.get("message") or "the response failed") if isinstance(err, dict) else ""
        error_class = classify_http_error(500 if code == "server_error" else 400, msg, code)
        if code == "rate_limit_exceeded":
            error_class = ErrorClass.RATE_LIMIT
        return CallFailure(error_class, f"response failed: {code}: {msg}", 200)
    if not isinstance(output, list):
        return UnusableBody("response has no output list")
    texts: list[str] = []
    summaries: list[str] = []
    citations: list[dict[str, Any]] = []
    refusal = None
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "reasoning":
            for part in item.get("summary") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    summaries.append(part["text"])
        elif item.get("type") == "message":
            for part in item.get("content") or []:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                    for a in part.get("annotations") or []:
                        if isinstance(a, dict) and a.get("type") == "url_citation":
                            citations.append({"url": a.get("url"), "title": a.get("title")})
                elif part.get("type") == "refusal":
                    refusal = str(part.get("refusal") or "")
    reason = (body.get("incomplete_details") or {}).get("reason")
    if reason == "content_filter" or (refusal is not None and not texts):
        # The provider withheld the answer, or the model answered with a refusal part: an
        # answer that is a refusal (its text: what came before the filter, or the refusal).
        return Completion(
            content="".join(texts) if texts else (refusal or ""),
            reasoning="\n\n".join(summaries) or None,
            finish_reason="content_filter" if reason == "content_filter" else "refusal",
            usage=_usage(body.get("usage")),
        )
    if not texts and status == "completed":
        return UnusableBody("response has no output text")
    finish = "length" if status == "incomplete" and reason == "max_output_tokens" else "stop"
    if status not in ("completed", "incomplete"):
        return UnusableBody(f"response status {status!r} is not final")
    return Completion(
        content="".join(texts),
        reasoning="\n\n".join(summaries) or None,
        finish_reason=finish,
        usage=_usage(body.get("usage")),
        citations=citations,
    )


class ResponsesWire(OpenAIErrors):
    path = "/responses"

    def parse(self, body: dict[str, Any]) -> Completion | CallFailure:
        return parse(body)


class ResponsesClient(HTTPClient):
    def __init__(self, config: EndpointConfig) -> None:
        super().__init__(config, ResponsesWire())
