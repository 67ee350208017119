"""The calls one pair needs, as exact request bytes with content-addressed keys.

A key is a hash of (pair id, role, request body). The same pair, role and
request always get the same key, whatever the worker count, ordering or shard
layout; any change to what is sent (model, prompt, sampling, the answers shown
to the judge) gives a new key, so a stale outcome is never reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from evaluator import protocol
from evaluator.config import RunConfig
from evaluator.dataset import Pair

GEN_ROLES = ("gen_for", "gen_against")


@dataclass(frozen=True, slots=True)
class CallSpec:
    pair_id: int
    role: str
    body: bytes
    key: str
    body_sha: str


def _spec(pair_id: int, role: str, payload: dict) -> CallSpec:
    body = orjson.dumps(payload)
    body_sha = hashlib.sha256(body).hexdigest()
    key = hashlib.sha256(f"{pair_id}\0{role}\0{body_sha}".encode()).hexdigest()[:32]
    return CallSpec(pair_id, role, body, key, body_sha)


def generation_calls(config: RunConfig, pair: Pair) -> tuple[CallSpec, CallSpec]:
    return (
        _spec(
            pair.id,
            "gen_for",
            protocol.generation_body(config.model, config.system_prompt, pair.for_question),
        ),
        _spec(
            pair.id,
            "gen_against",
            protocol.generation_body(config.model, config.system_prompt, pair.against_question),
        ),
    )


def judge_call(
    config: RunConfig, pair: Pair, order: str, answer_for: str, answer_against: str
) -> CallSpec:
    """Forward: the for side is Question 1 / Person 1. Reverse swaps them (position-bias check)."""
    if order == "forward":
        q1, a1, q2, a2 = pair.for_question, answer_for, pair.against_question, answer_against
    else:
        q1, a1, q2, a2 = pair.against_question, answer_against, pair.for_question, answer_for
    message = protocol.judge_user_message(pair.issue_description, q1, a1, q2, a2)
    return _spec(
        pair.id,
        f"judge_{order}",
        protocol.judge_body(config.judge_model, config.judge_prompt, message),
    )
