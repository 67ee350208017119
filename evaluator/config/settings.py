"""Every setting of a run, declared once.

A `Setting` says a setting's type, default, `--help` text, whether it changes the bytes
of requests (those guard `--resume`: REQUEST_SETTINGS) and whether it belongs to a role.
A role setting (`role=True`) is declared once for the model under test and exists twice:
the model's `X` and the judge's `judge_X`, with flags `--X` and `--judge-X` and TOML keys
`X` / `judge_X` (or `X` in a `[model]` / `[judge]` table). Everything else is read from
this table: RunConfig's fields (evaluator.config.run_config), the `run` flags and their
`--help` defaults (evaluator.cli.parser), the TOML keys and their type checks
(evaluator.config.loader), validation and the resume guard.

Kinds: "field" is a RunConfig field with a flag and a TOML key; "stored" a RunConfig field
the run sets itself (no flag: the prompt texts, the protocol label); "input" a flag and
TOML key that the loader turns into fields (a prompt file, a managed-server setting).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluator import protocol
from evaluator.breaker import DEFAULT_MAX_FAILURES
from evaluator.config.declare import Setting, int_bounds, number_bounds
from evaluator.judge_prompt import DEFAULT_FOR_RUN
from workers.follow_policy import FollowSettings
from workers.providers import OPTIONS_BY_PROVIDER
from workers.server_settings import ServerSettings

_SERVER_DEFAULTS = ServerSettings()  # [model.vllm] / [judge.vllm] keys and defaults
_FOLLOW = FollowSettings()  # concurrency when none is given (workers/follow_policy.py)

ROLES = ("model", "judge")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
JUDGE_ORDERS = ("forward", "reverse", "both")
MODES = ("online", "batch")
PROVIDERS = tuple(OPTIONS_BY_PROVIDER)  # the wire formats (workers.providers)
PROTOCOL = (
    f"gen:t={protocol.GEN_TEMPERATURE},p={protocol.GEN_TOP_P},max={protocol.GEN_MAX_TOKENS};"
    f"judge:t={protocol.JUDGE_TEMPERATURE},p={protocol.JUDGE_TOP_P},max={protocol.JUDGE_MAX_TOKENS};"
    f"cut={protocol.ANSWER_CHAR_LIMIT}"
)
DEFAULT_JUDGE_MODEL = "google/gemma-3-27b-it"  # spec §3's default judge
DEFAULT_JUDGE_PROMPT_CHOICE = DEFAULT_FOR_RUN  # `run` asks for the paper's prompt

# The most calls in flight per stage and endpoint: one worker task and one pooled
# connection each; beyond this one event loop spends its time on bookkeeping, and a typo
# (an extra zero or three) would otherwise start millions of tasks.
MAX_CONCURRENCY = 100_000
_FOREVER = 10**9  # a bound no sensible count reaches, and that SQLite and JSON hold
_WEEK = 7 * 86400


WHAT = "what to evaluate"
PROVIDER = "providers (wire formats) and their options; see docs/providers.md"
SERVERS = (
    "managed vLLM servers (GPU nodes, needs the vllm extra; more settings: [model.vllm] "
    "and [judge.vllm] in --config)"
)
THROUGHPUT = "throughput and retries"
COST = "cost estimates (USD per million tokens)"
BATCH = "batch mode (the provider's Batch API: half price, answers within 24h)"
GROUPS = (WHAT, PROVIDER, SERVERS, THROUGHPUT, COST, BATCH)


def _absolute(path: str) -> str:
    """A path stored in the run config: absolute, so --resume works from anywhere."""
    return str(Path(path).resolve())


_GPUS = str | int | list[int | str]

SETTINGS: tuple[Setting, ...] = (
    # -- what to evaluate
    Setting(
        "data", str, help="dataset: a .jsonl/.csv/.parquet path, 'sample', or "
        "hf:val-bench/VAL-Bench", request=True, group=WHAT,
    ),
    Setting("split", str, "test", help="hub split", request=True, group=WHAT),
    Setting(
        "limit", int | None, None, help="evaluate only the first N valid pairs", group=WHAT,
        bounds=int_bounds(1, _FOREVER, "pairs"), unset="all",
    ),
    Setting(
        "shard", str | None, None, metavar="I/N", request=True, group=WHAT,
        help="only shard I of N (0-based; pairs split by a hash of their id; --limit applies "
        "first); combine the shards with `merge`",
    ),
    Setting(
        "model", str, role=True, request=True, group=WHAT, judge_default=DEFAULT_JUDGE_MODEL,
        help=("model under test (name the endpoint serves)", "judge model"),
    ),
    Setting(
        "base_url", list[str], role=True, many="append", group=WHAT, toml_type=str | list[str],
        help=(
            "model endpoint, e.g. https://api.openai.com/v1; repeat it for a pool of servers",
            "judge endpoint (default: the model endpoint); repeat it for a pool",
        ),
    ),
    Setting(
        "api_key_env", str | None, None, role=True, group=WHAT,
        help="environment variable (or .env entry) holding the {role} endpoint's key",
    ),
    Setting(
        "judge_prompt", str, protocol.DEFAULT_JUDGE_PROMPT, request=True, group=WHAT,
        metavar="paper|builtin|FILE", shown_default=DEFAULT_JUDGE_PROMPT_CHOICE,
        help="the judge's system prompt: paper (the authors' exact prompt and schema, "
        "fetched by pinned commit and hash and cached; see `fetch`), builtin (our wording of "
        "the rubric), or a file (trailing line breaks removed)",
    ),
    Setting(
        "judge_prompt_file", Path | None, None, kind="input", group=WHAT, cli_type=Path,
        toml_type=str, help="the same as --judge-prompt FILE",
    ),
    Setting(
        "judge_only", bool, False, group=WHAT,
        help="the dataset holds the answers (for_response, against_response): judge them, "
        "generate nothing; an error if the columns are missing (a dataset with them is "
        "judge-only anyway)",
    ),
    Setting(
        "system_prompt_file", Path | None, None, kind="input", group=WHAT, cli_type=Path,
        toml_type=str, help="replace the spec's generation system prompt (breaks comparability)",
    ),
    Setting(
        "judge_order", str, "forward", choices=JUDGE_ORDERS, request=True, group=WHAT,
        help="forward, reverse, both",
    ),
    Setting(
        "reuse", list[str], [], many="+", metavar="DIR", group=WHAT,
        help="earlier run directories: completed calls with the same request are copied, "
        "not sent",
    ),
    # Set by the run from the choices above, stored so that a resume sends the same.
    Setting("system_prompt", str, protocol.DEFAULT_SYSTEM_PROMPT, request=True, kind="stored"),
    # Where the prompts came from (evaluator.identity): "builtin" | "paper" | "file:PATH",
    # and "spec" | "file:PATH". The texts above are what is sent; these only label them.
    Setting("judge_prompt_source", str, "builtin", kind="stored"),
    Setting("system_prompt_source", str, "spec", kind="stored"),
    # The judge's response schema; None: protocol.VERDICT_SCHEMA. The paper protocol uses
    # the authors' OUTPUT_JSON_SCHEMA (evaluator.paper_prompt).
    Setting("judge_schema", dict[str, Any] | None, None, request=True, kind="stored"),
    Setting("simulated", bool, False, kind="stored"),
    Setting("protocol", str, PROTOCOL, request=True, kind="stored"),
    # -- providers: the wire format of each role (workers.providers) and its options
    Setting(
        "provider", str, "openai", role=True, request=True, choices=PROVIDERS, group=PROVIDER,
        help=(
            "model endpoint's API: openai = chat completions (vLLM too)",
            "judge endpoint's API; --provider when the judge shares the model's endpoint",
        ),
    ),
    Setting(
        "reasoning_effort", str | None, None, role=True, request=True, group=PROVIDER,
        help="{role}: reasoning effort (openai-responses reasoning.effort; openai "
        "reasoning_effort)",
    ),
    Setting(
        "thinking_budget", int | None, None, role=True, request=True, group=PROVIDER,
        help="{role}: thinking budget in tokens (anthropic; >= 1024)",
    ),
    Setting(
        "web_search", bool, False, role=True, request=True, group=PROVIDER,
        help="{role}: give the model the provider's web search tool",
    ),
    # -- managed vLLM servers (workers/server_settings.py): the role's `[model.vllm]` /
    # `[judge.vllm]` table; `--vllm MODEL` (or `vllm = "MODEL"`) is its `model` key.
    Setting(
        "vllm", dict[str, Any] | None, None, role=True, group=SERVERS, metavar="MODEL",
        toml_type=str | dict[str, Any], server_key="model",
        help=(
            "start vLLM servers for the model under test; they replace --base-url",
            "start vLLM servers for the judge",
        ),
    ),
    Setting(
        "gpus", str | None, None, role=True, kind="input", group=SERVERS, server_key="gpus",
        toml_type=_GPUS, unset=",".join(_SERVER_DEFAULTS.gpus),
        help=("GPUs for --vllm servers, e.g. 0-7 or 0,1", "GPUs for --judge-vllm servers"),
    ),
    Setting(
        "tensor_parallel", int | None, None, role=True, kind="input", group=SERVERS,
        server_key="tensor_parallel", metavar="N", unset=str(_SERVER_DEFAULTS.tensor_parallel),
        help=("GPUs per --vllm server", "GPUs per judge server"),
    ),
    Setting(
        "vllm_command", str | None, None, kind="input", group=SERVERS, metavar="CMD",
        server_key="command",
        help="launch command template instead of `vllm serve {model} {vllm_args}`, "
        "e.g. a container wrapper (placeholders: see docs/gpu-and-clusters.md)",
    ),
    # -- throughput and retries
    Setting(
        "concurrency", int | None, None, role=True, group=THROUGHPUT,
        bounds=int_bounds(1, MAX_CONCURRENCY, "calls in flight"),
        help=(
            "generation calls in flight per endpoint, a fixed cap",
            "judge calls in flight per endpoint, a fixed cap",
        ),
        unset=(
            "follow the server's load where it publishes vLLM metrics, up to "
            f"{_FOLLOW.ceiling}; elsewhere {_FOLLOW.fallback}",
            "as --concurrency",
        ),
    ),
    Setting(
        "rpm", float | None, None, role=True, group=THROUGHPUT,
        bounds=number_bounds(0, _FOREVER, "requests per minute; 0.5 is one every 2 minutes", above=True),
        help="requests/minute cap on the {role} endpoint", unset="none",
    ),
    Setting(
        "tpm", float | None, None, role=True, group=THROUGHPUT,
        bounds=number_bounds(0, _FOREVER, "tokens per minute", above=True),
        help="tokens/minute cap on each {role} endpoint", unset="none",
    ),
    Setting(
        "timeout_s", float, 600.0, group=THROUGHPUT, bounds=number_bounds(0, _WEEK, "seconds", above=True),
        help="seconds per request",
    ),
    # A server asking to wait longer than this (Retry-After, a rate-limit reset) stops the
    # run (exit 9, resumable) instead of holding it; see workers.pool for the default's reasons.
    Setting(
        "max_retry_wait_s", float, 300.0, group=THROUGHPUT, metavar="SECONDS",
        bounds=number_bounds(0, _WEEK, "seconds"),
        help="a server asking to wait longer than this (Retry-After, a rate-limit reset) "
        "stops the run with exit 9, resumable after the wait",
    ),
    # An answer body larger than this is not read; see workers.client for the default's reasons.
    Setting(
        "max_response_mb", float, 4.0, group=THROUGHPUT, metavar="MB",
        bounds=number_bounds(0, 4096, "MB", above=True),
        help="an answer larger than this is not read: the call fails as response_too_large",
    ),
    # How calls travel, not what they ask: it may change on --resume.
    Setting(
        "ca_bundle", str | None, None, group=THROUGHPUT, cli_type=_absolute,
        help="PEM file of CA certificates to trust besides the system's (https endpoints "
        "behind a gateway with a private CA; SSL_CERT_FILE works too)",
    ),
    Setting(
        "max_attempts", int, 6, group=THROUGHPUT, bounds=int_bounds(1, 1000, "tries per call"),
        help="tries per call for retryable errors",
    ),
    Setting(
        "retry_budget", int | None, None, group=THROUGHPUT, bounds=int_bounds(0, _FOREVER, "retries"),
        help="retries allowed for the whole run", unset="unlimited",
    ),
    Setting(
        "backoff_base_s", float, 1.0, group=THROUGHPUT, bounds=number_bounds(0, 3600, "seconds"),
        help="first retry wait in seconds, doubled each time",
    ),
    Setting(
        "judge_retries", int, 2, group=THROUGHPUT, bounds=int_bounds(0, 100, "re-asks"),
        help="re-asks when a verdict is invalid",
    ),
    # The circuit breaker (evaluator/breaker.py): N failures in a row, P% of the last 200.
    Setting(
        "max_failures", str, DEFAULT_MAX_FAILURES, group=THROUGHPUT, metavar="N|P%",
        help="stop the run (exit 7, resumable) when N calls of a stage fail the same way in "
        "a row, or more than P% of its last 200 calls fail; both as N,P%; off to disable",
    ),
    # -- cost estimates
    Setting(
        "price_in", float | None, None, role=True, group=COST,
        bounds=number_bounds(0, _FOREVER, "USD per million tokens"), help="{role}'s input price",
        unset="the price table's",
    ),
    Setting(
        "price_out", float | None, None, role=True, group=COST,
        bounds=number_bounds(0, _FOREVER, "USD per million tokens"), help="{role}'s output price",
        unset="the price table's",
    ),
    Setting(
        "prices", str | None, None, group=COST, unset="the bundled evaluator/data/prices.toml",
        help="price table (TOML) to use instead of the bundled one",
    ),
    Setting(
        "max_cost", float | None, None, group=COST, bounds=number_bounds(0, _FOREVER, "USD", above=True),
        help="USD: stop cleanly (exit 76, resumable) before the run's cost would exceed this",
        unset="no limit",
    ),
    # -- batch mode (evaluator.batch)
    Setting(
        "mode", str, "online", role=True, choices=MODES, group=BATCH,
        help=("how generation calls are sent", "how judge calls are sent"),
    ),
    Setting(
        "batch_max_requests", int | None, None, group=BATCH,
        bounds=int_bounds(1, _FOREVER, "requests"), help="requests per batch",
        unset="the provider's limit",
    ),
    Setting(
        "batch_max_mb", float | None, None, group=BATCH,
        bounds=number_bounds(0, _FOREVER, "MB", above=True), help="MB per batch",
        unset="the provider's limit",
    ),
    Setting(
        "batch_capacity", int, 10_000, group=BATCH, bounds=int_bounds(1, _FOREVER, "calls"),
        help="a batch stage's calls waiting at once",
    ),
    Setting(
        "batch_window_s", float, 300.0, group=BATCH,
        bounds=number_bounds(0, _WEEK, "seconds", above=True),
        help="seconds a call may wait before its batch is submitted",
    ),
    Setting(
        "batch_idle_s", float, 10.0, group=BATCH, bounds=number_bounds(0, _WEEK, "seconds", above=True),
        help="submit the open batch after this many seconds without a new call",
    ),
    Setting(
        "batch_poll_s", float, 30.0, group=BATCH, bounds=number_bounds(0, 86400, "seconds", above=True),
        help="seconds between status polls",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# Every variant by its field (or input) name: `judge_rpm` -> (the rpm Setting, "judge").
VARIANTS: dict[str, tuple[Setting, str | None]] = {
    name: (s, role) for s in SETTINGS for role, name, _ in s.variants()
}
FLAGS: dict[str, str] = {name: flag for s in SETTINGS for _, name, flag in s.variants()}
ROLE_SETTINGS = tuple(s for s in SETTINGS if s.role and s.kind != "input")

# Settings that change what is sent: resuming with a different value would mix two
# different experiments in one run, so it is refused.
REQUEST_SETTINGS: tuple[str, ...] = tuple(
    name for s in SETTINGS if s.request for _, name, _ in s.variants()
)


def flag_of(name: str) -> str:
    """`--judge-rpm` for `judge_rpm`, `--timeout` for `timeout_s`."""
    return "--" + FLAGS.get(name, name.replace("_", "-"))
