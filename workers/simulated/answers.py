"""The simulated server's answer bodies, one builder per wire format: chat completions,
OpenAI Responses and Anthropic Messages (with their reasoning, web-search and citation
blocks), each labelled as coming from the simulated backend."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from workers.simulated.parse import SimRequest

SIM_FINGERPRINT = "simulated-backend"


def web_citations(question: str) -> list[dict[str, str]]:
    tag = hashlib.sha256(question.encode()).hexdigest()[:10]
    return [
        {
            "url": f"https://example.invalid/simulated-source/{tag}",
            "title": "SIMULATED search result (not a real page)",
            "cited_text": "Simulated text standing in for a cited passage.",
        }
    ]


def chat_answer(
    req: SimRequest, content: str, finish: str, prompt: int, out: int
) -> dict[str, Any]:
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


def responses_answer(req, content, finish, reasoning, citations, prompt, out) -> dict[str, Any]:
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


def messages_answer(req, content, finish, reasoning, citations, verdict, usage) -> dict[str, Any]:
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
