"""A run's protocol identity: which judge prompt, judge schema and generation system prompt it
used, as sources and sha256 hashes.

summary.json, report.md and the checkpoint record it; `--resume` refuses a change of any
of them (they are request settings); `compare` and `agreement` refuse to put runs with
different identities side by side unless forced, and then say what differs.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from evaluator import paper_prompt, protocol

if TYPE_CHECKING:
    from evaluator.config import RunConfig

# The keys of summary.json that make two runs' numbers comparable (with what they mean).
COMPARED = {
    "judge_prompt_sha256": "judge prompts",
    "judge_schema_sha256": "judge response schemas",
    "system_prompt_sha256": "generation system prompts",
    "sampling": "sampling settings",
}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def schema_sha256(schema: dict[str, Any] | None) -> str:
    """Hash of the schema's canonical JSON (keys sorted), None meaning the builtin one."""
    value = protocol.VERDICT_SCHEMA if schema is None else schema
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def judge_prompt_source(config: RunConfig) -> tuple[str, str]:
    """(kind, where): kind is paper, builtin or file."""
    source = config.judge_prompt_source
    if source == "paper":
        return "paper", paper_prompt.PAPER.describe()
    if source.startswith("file:"):
        return "file", source[5:]
    if config.judge_prompt != protocol.DEFAULT_JUDGE_PROMPT:
        # A run stored before sources were recorded, with a prompt of its own.
        return "file", "(path not recorded)"
    return "builtin", "evaluator/protocol.py DEFAULT_JUDGE_PROMPT (our wording of the rubric)"


def system_prompt_source(config: RunConfig) -> tuple[str, str]:
    """(kind, where): kind is spec (the paper's system prompt, spec §2) or file."""
    if config.system_prompt_source.startswith("file:"):
        return "file", config.system_prompt_source[5:]
    if config.system_prompt != protocol.DEFAULT_SYSTEM_PROMPT:
        return "file", "(path not recorded)"
    return "spec", "the paper's generation system prompt (spec §2)"


def identity(config: RunConfig) -> dict[str, Any]:
    """The protocol identity of a run, as summary.json and the checkpoint record it."""
    judge_kind, judge_where = judge_prompt_source(config)
    system_kind, system_where = system_prompt_source(config)
    return {
        "judge_prompt_source": judge_kind,
        "judge_prompt_origin": judge_where,
        "judge_prompt_sha256": sha256_text(config.judge_prompt),
        "judge_prompt_chars": len(config.judge_prompt),
        "judge_schema_sha256": schema_sha256(config.judge_schema),
        "system_prompt_source": system_kind,
        "system_prompt_origin": system_where,
        "system_prompt_sha256": sha256_text(config.system_prompt),
        "sampling": config.protocol,
        "answers": "dataset" if config.judge_only else "generated",
    }


def describe_prompt(config: RunConfig, name: str) -> str:
    """`paper sha256 3d0b73595043…`: a prompt named by its source and hash."""
    if name == "judge_prompt":
        kind, _ = judge_prompt_source(config)
    else:
        kind, _ = system_prompt_source(config)
    return f"{kind} (sha256 {sha256_text(getattr(config, name))[:12]}…)"


def differences(summaries: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """What differs between runs' protocol identities, one phrase per differing part
    (an identity a run does not record counts as unknown, which differs from any other)."""
    out = []
    for key, what in COMPARED.items():
        values = [s.get(key) for s in summaries]
        if len(set(values)) > 1:
            source_key = key.replace("_sha256", "_source")
            parts = []
            for label, s, value in zip(labels, summaries, values, strict=True):
                text = (
                    "unknown" if value is None else f"{value[:12]}…" if key != "sampling" else value
                )
                source = s.get(source_key) if source_key != key else None
                parts.append(f"{label}: {source + ' ' if source else ''}{text}")
            out.append(f"different {what} ({'; '.join(parts)})")
    return out
