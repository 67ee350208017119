"""Each wire format's parse: an answer, a failure the body reports, or an UnusableBody (a
typed, transient CallFailure), never a bare string."""

from __future__ import annotations

from workers import anthropic, openai_responses
from workers.anthropic import MessagesWire
from workers.base import CallFailure, Completion, ErrorClass, UnusableBody
from workers.client import parse_raw
from workers.openai_compat import parse_chat


def _unusable(result: object, says: str) -> None:
    assert isinstance(result, UnusableBody) and isinstance(result, CallFailure)
    assert result.error_class is ErrorClass.TRANSIENT and result.error_class.retryable
    assert result.status == 200 and says in result.message


def test_unusable_bodies_are_typed_failures() -> None:
    _unusable(parse_chat({"id": "x"}), "unusable response body")
    _unusable(parse_chat({"choices": [{"message": {"content": None}}]}), "no text content")
    _unusable(openai_responses.parse({"status": "completed"}), "no output list")
    _unusable(anthropic.parse({"type": "message"}), "no content list")
    _unusable(parse_raw(MessagesWire(), b"<html>bad gateway</html>"), "unusable response body")
    _unusable(parse_raw(MessagesWire(), b"[1, 2]"), "unusable response body")


def test_answers_and_reported_errors_are_unchanged() -> None:
    ok = parse_chat({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
    assert isinstance(ok, Completion) and ok.content == "hi"
    err = anthropic.parse({"type": "error", "error": {"type": "overloaded_error", "message": "m"}})
    assert type(err) is CallFailure and err.error_class is ErrorClass.TRANSIENT
