"""Request parsing for the simulated server: one body of any wire format (chat completions,
OpenAI Responses, Anthropic Messages) read into the `SimRequest` the simulation needs,
refusing what the format does not allow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


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
