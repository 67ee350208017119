"""The simulated server's error bodies, in the shapes vLLM, OpenAI and Anthropic send.

`error_body` writes an error in a request format's own shape; `refuse` decides what a
real server refuses before generating anything (a model it does not serve, a prompt over
its context window, max_tokens over its limit); `not_found` is the 404 for a path the
server does not have.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.simulated.parse import SimRequest
    from workers.simulated.server import SimulatedServer

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
