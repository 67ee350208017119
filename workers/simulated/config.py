"""What a simulated server is told: `SimConfig` (personas, injected faults, limits, the
names it serves, the flavor of its errors, batch and GPU settings) and the question ->
side map it uses to know which side of a pair it was asked."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.simulated import errors, personas
from workers.simulated.batching import BatchingConfig


@dataclass
class SimConfig:
    persona: str = "consistent"
    judge_persona: str = "faithful"  # personas.JUDGE_PERSONAS: how the judge reads answers
    share: float = 0.7  # mixture: share of pairs answered consistently
    seed: int = 0
    latency_median_ms: float = 0.0
    latency_sigma: float = 0.5
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    malformed_rate: float = 0.0
    retry_after_s: float = 0.0
    reasoning: bool = False  # prepend a <think> block to model answers
    api_key: str | None = None  # when set, requests without this bearer key get 401
    fail_auth_after: int | None = None  # answer 401 to every chat request after this many
    quota_after: int | None = None  # answer 429 insufficient_quota after this many
    rate_reset: float = 0.0  # share of responses cut off mid-body (connection closed)
    rate_stall: float = 0.0  # share of requests that stall for stall_s before answering
    stall_s: float = 5.0
    burst: int = 1  # a 429/5xx fault repeats for this many consecutive requests (a storm)
    # Provider-style limits: requests and tokens (prompt + max_tokens) per minute, enforced
    # with 429s, announced in x-ratelimit-* headers on every answer.
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    # The model names served (vLLM's --served-model-name): a request for any other name is
    # refused with the 404 a real server sends. Empty: the two default names below.
    # `any_model` answers every name (the demo's old behaviour; never what a real server does).
    served_names: tuple[str, ...] = ()
    any_model: bool = False
    # Whose error bodies chat completions and Responses copy: "vllm" (vLLM's OpenAI-compatible
    # server) or "openai" (api.openai.com); Messages always answer as Anthropic. See errors.refuse.
    flavor: str = "vllm"
    # Context window (prompt + max_tokens, in tokens, a token being 4 request bytes) and, for
    # the openai flavor and Messages, the most output tokens a request may ask for.
    max_model_len: int = 32768
    max_output_tokens: int | None = None
    # After this many requests, stop serving every model name (as a server restarted with
    # another --served-model-name would): each later request gets the unknown-model 404.
    unserve_after: int | None = None
    # Batch APIs (workers/simulated/batches.py): seconds until a batch ends; every k-th new
    # request body fails (server error) or expires on its first submission; a lower limit
    # on requests per batch.
    batch_delay_s: float = 0.0
    batch_fail_every: int = 0
    batch_expire_every: int = 0
    batch_limit: int | None = None
    # A simulated continuous-batching GPU releases the answers (None: at once, or after
    # the latency drawn above), and GET /metrics serves vLLM's metrics for it.
    batching: BatchingConfig | None = None
    # question text -> (pair id, "for" | "against"); without it a question's side is guessed
    sides: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.persona not in personas.PERSONAS:
            raise ValueError(
                f"unknown persona {self.persona!r}; choose from {', '.join(personas.PERSONAS)}"
            )
        if self.flavor not in errors.FLAVORS:
            raise ValueError(f"unknown flavor {self.flavor!r}; choose from {errors.FLAVORS}")
        if self.judge_persona not in personas.JUDGE_PERSONAS:
            raise ValueError(
                f"unknown judge persona {self.judge_persona!r}; choose from "
                f"{', '.join(personas.JUDGE_PERSONAS)}"
            )


DEFAULT_SERVED = ("simulated-model", "simulated-judge")


def sides_from_pairs(pairs) -> dict[str, tuple[int, str]]:
    """The question -> (pair, side) map the simulated model uses to know which side it was asked."""
    out: dict[str, tuple[int, str]] = {}
    for p in pairs:
        out[p.for_question] = (p.id, "for")
        out[p.against_question] = (p.id, "against")
    return out
