"""The calls one pair needs, as exact request bytes with content-addressed keys.

A key is a hash of (pair id, role, request body). The same pair, role and
request always get the same key, whatever the worker count, ordering or shard
layout; any change to what is sent (model, prompt, sampling, the answers shown
to the judge, the provider's wire format and its options) gives a new key, so a
stale outcome is never reused. Bodies are built by the stage's provider
(workers.providers); the default provider's bodies are those protocol.py describes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from evaluator import protocol
from evaluator.config import RunConfig
from evaluator.dataset import Pair
from workers.providers import get_provider


@dataclass(frozen=True, slots=True)
class CallSpec:
    pair_id: int
    role: str
    body: bytes
    key: str
    body_sha: str
    max_tokens: int = 0  # the most output tokens the body allows (rate and cost limits)


def _spec(pair_id: int, role: str, payload: dict) -> CallSpec:
    body = orjson.dumps(payload)
    body_sha = hashlib.sha256(body).hexdigest()
    key = hashlib.sha256(f"{pair_id}\0{role}\0{body_sha}".encode()).hexdigest()[:32]
    max_tokens = payload.get("max_tokens") or payload.get("max_output_tokens") or 0
    return CallSpec(pair_id, role, body, key, body_sha, int(max_tokens))


class CallBuilder:
    """A run's calls. The stages' providers and options are looked up once here, not once
    per call: this runs for every call of the run, on the event loop."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._gen = get_provider(config.provider)
        self._gen_options = config.stage_options("gen")
        self._judge = get_provider(config.judge_provider)
        self._judge_options = config.stage_options("judge")

    def generation_body(self, question: str) -> dict:
        """The model's request for one question, in the stage's wire format."""
        c = self.config
        return self._gen.build_body(
            c.model,
            c.system_prompt,
            question,
            temperature=protocol.GEN_TEMPERATURE,
            top_p=protocol.GEN_TOP_P,
            max_tokens=protocol.GEN_MAX_TOKENS,
            options=self._gen_options,
        )

    def judge_body(self, user_message: str) -> dict:
        """The judge's request, in the judge's wire format, asking for the verdict schema."""
        c = self.config
        return self._judge.build_body(
            c.judge_model,
            c.judge_prompt,
            user_message,
            temperature=protocol.JUDGE_TEMPERATURE,
            top_p=protocol.JUDGE_TOP_P,
            max_tokens=protocol.JUDGE_MAX_TOKENS,
            json_schema=c.judge_schema if c.judge_schema is not None else protocol.VERDICT_SCHEMA,
            options=self._judge_options,
        )

    def generation_calls(self, pair: Pair) -> tuple[CallSpec, CallSpec]:
        return (
            _spec(pair.id, "gen_for", self.generation_body(pair.for_question)),
            _spec(pair.id, "gen_against", self.generation_body(pair.against_question)),
        )

    def judge_call(self, pair: Pair, order: str, answer_for: str, answer_against: str) -> CallSpec:
        """Forward: the for side is Question 1 / Person 1. Reverse swaps them (position bias)."""
        if order == "forward":
            q1, a1, q2, a2 = pair.for_question, answer_for, pair.against_question, answer_against
        else:
            q1, a1, q2, a2 = pair.against_question, answer_against, pair.for_question, answer_for
        message = protocol.judge_user_message(pair.issue_description, q1, a1, q2, a2)
        return _spec(pair.id, f"judge_{order}", self.judge_body(message))


def generation_body(config: RunConfig, question: str) -> dict:
    return CallBuilder(config).generation_body(question)


def judge_body(config: RunConfig, user_message: str) -> dict:
    return CallBuilder(config).judge_body(user_message)


def generation_calls(config: RunConfig, pair: Pair) -> tuple[CallSpec, CallSpec]:
    return CallBuilder(config).generation_calls(pair)


def judge_call(
    config: RunConfig, pair: Pair, order: str, answer_for: str, answer_against: str
) -> CallSpec:
    return CallBuilder(config).judge_call(pair, order, answer_for, answer_against)
