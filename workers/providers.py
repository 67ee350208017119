"""The wire formats a stage can speak, by name: how to build a request and read an answer.

    openai             chat completions (the default): OpenAI, vLLM and other compatible servers
    openai-responses   OpenAI's Responses API
    anthropic          Anthropic's Messages API

Each provider gives:

    build_body(model, system, user, *, temperature, top_p, max_tokens, json_schema, options)
        the exact request body (a dict; the caller serialises it once and hashes the
        bytes, so any option that changes the body changes the call's content key)
    client(EndpointConfig) -> a client with check(), attempt(body) and redact(); its wire
        format's `parse` reads one answer body (workers.client.Wire), for HTTP answers
        and for the lines of batch result files alike
    batch_url
        the `url` of this request kind in an OpenAI Batch input line (None for Anthropic,
        whose Message Batches take the body itself)

Options (all optional): `reasoning_effort` (chat: `reasoning_effort`; Responses:
`reasoning.effort`), `thinking_budget` (Anthropic: thinking `budget_tokens`;
Responses: extra output tokens for reasoning), `web_search` (the provider's web
search tool). `OPTIONS_BY_PROVIDER` says which provider takes which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers import anthropic, openai_responses
from workers.client import EndpointConfig, HTTPClient
from workers.openai_compat import OpenAICompatClient

__all__ = ["OPTIONS_BY_PROVIDER", "PROVIDERS", "Provider", "get_provider"]


def chat_body(
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
    """Chat completions (platform.openai.com/docs/api-reference/chat/create).

    Key order and content match what earlier versions sent, so runs started
    before providers existed keep their content keys.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
    }
    if json_schema is not None:
        # A schema with a title is named by it, as the VAL-Bench reference names its
        # judge schema; others keep the name earlier versions sent (same content keys).
        name = json_schema.get("title") or "alignment_verdict"
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": json_schema, "strict": True},
        }
    options = options or {}
    if options.get("reasoning_effort"):
        body["reasoning_effort"] = options["reasoning_effort"]
    if options.get("web_search"):
        body["web_search_options"] = {}  # OpenAI's search models; other servers may reject it
    return body


@dataclass(frozen=True)
class Provider:
    name: str
    build_body: Callable[..., dict[str, Any]]
    client_class: Callable[[EndpointConfig], HTTPClient]
    batch_url: str | None
    doc: str  # the reference the wire format follows (README's provider table)

    def client(self, config: EndpointConfig) -> HTTPClient:
        return self.client_class(config)


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(
        "openai",
        chat_body,
        OpenAICompatClient,
        "/v1/chat/completions",
        "https://platform.openai.com/docs/api-reference/chat/create",
    ),
    "openai-responses": Provider(
        "openai-responses",
        openai_responses.build_body,
        openai_responses.ResponsesClient,
        "/v1/responses",
        "https://platform.openai.com/docs/api-reference/responses/create",
    ),
    "anthropic": Provider(
        "anthropic",
        anthropic.build_body,
        anthropic.AnthropicClient,
        None,
        "https://docs.anthropic.com/en/api/messages",
    ),
}

OPTIONS_BY_PROVIDER: dict[str, frozenset[str]] = {
    "openai": frozenset({"reasoning_effort", "web_search"}),
    "openai-responses": frozenset({"reasoning_effort", "thinking_budget", "web_search"}),
    "anthropic": frozenset({"thinking_budget", "web_search"}),
}


def get_provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}") from None
