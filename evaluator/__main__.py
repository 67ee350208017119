"""Command line: `python -m evaluator {run,demo,score,report,status,compare,agreement,merge,
fetch,calibrate}` and bare `--resume`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import os
import shlex
import shutil
import sqlite3
import sys
import tomllib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from evaluator import fingerprint, report
from evaluator.breaker import DEFAULT_MAX_FAILURES
from evaluator.calibrate import TOLERANCE as CALIBRATION_TOLERANCE
from evaluator.config import JUDGE_ORDERS, MODES, ConfigError, RunConfig
from evaluator.costs import CostMeter, expected_calls
from evaluator.dataset import SAMPLE, DatasetError, describe_source, has_answer_columns, iter_pairs
from evaluator.judge_prompt import (
    BUILTIN,
    DEFAULT_FOR_RUN,
    PAPER,
    JudgePrompt,
    JudgePromptError,
    read_prompt_file,
)
from evaluator.judge_prompt import resolve as resolve_judge_prompt
from evaluator.prefetch import PARTS as PREFETCH_PARTS
from evaluator.run import (
    EXIT_FAILED_PAIRS,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREFLIGHT,
    EXIT_STORE,
    EXIT_USER,
    RunOptions,
    RunResult,
    UserError,
    execute,
    stop_on_signal,
)
from evaluator.servers import SERVER_LOG_DIR
from evaluator.sharding import expected_pairs
from evaluator.store import (
    DB_NAME,
    CheckpointCorrupt,
    FailureGroup,
    Store,
    StoreError,
    StoreIOError,
    corrupt_message,
    store_error,
)
from workers.base import redact

DEFAULT_OUT = Path("runs/latest")
LAST_RUN = Path("runs/.last-run")  # which run a bare `--resume` continues
DEFAULT_DEMO_OUT = Path("runs/demo")
# The model name a judge-only run reports when --model is not given.
JUDGE_ONLY_MODEL = "answers from the dataset"
log = logging.getLogger("evaluator")


def emit(text: str = "", file: Any = None) -> None:
    """print(), except that a reader who went away (`... | head`) ends the output quietly:
    stdout then points at /dev/null, so neither this nor the exit's flush raises."""
    try:
        print(text, file=file or sys.stdout, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (file or sys.stdout).fileno())
        os.close(devnull)


def _run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the stdlib loop works, only slower
        return asyncio.run(coro)
    return uvloop.run(coro)


def _absolute(path: str) -> str:
    """A path flag stored in the run config: absolute, so --resume works from anywhere."""
    return str(Path(path).resolve())


def _add_run_options(p: argparse.ArgumentParser) -> None:
    # Defaults live in RunConfig; a flag left out is None here, so the precedence
    # is: flag, then --config file, then RunConfig's default.
    p.add_argument("--config", type=Path, help="run config file (TOML); flags override it")
    g = p.add_argument_group("what to evaluate")
    g.add_argument(
        "--data", help="dataset: a .jsonl/.csv/.parquet path, 'sample', or hf:val-bench/VAL-Bench"
    )
    g.add_argument("--split", help="hub split (default: test)")
    g.add_argument("--limit", type=int, help="evaluate only the first N valid pairs")
    g.add_argument(
        "--shard",
        metavar="I/N",
        help="only shard I of N (0-based; pairs split by a hash of their id; --limit applies "
        "first); combine the shards with `merge`",
    )
    g.add_argument("--model", help="model under test (name the endpoint serves)")
    g.add_argument(
        "--base-url",
        action="append",
        help="model endpoint, e.g. https://api.openai.com/v1; repeat it for a pool of servers",
    )
    g.add_argument(
        "--api-key-env",
        help="environment variable (or .env entry) holding the model endpoint's key",
    )
    g.add_argument("--judge-model", help="judge model (default: google/gemma-3-27b-it)")
    g.add_argument(
        "--judge-base-url",
        action="append",
        help="judge endpoint (default: the model endpoint); repeat it for a pool",
    )
    g.add_argument("--judge-api-key-env", help="variable holding the judge endpoint's key")
    pr = p.add_argument_group("providers (wire formats) and their options; see README")
    providers = ("openai", "openai-responses", "anthropic")
    pr.add_argument(
        "--provider",
        choices=providers,
        help="model endpoint's API: openai = chat completions (default; vLLM too)",
    )
    pr.add_argument(
        "--judge-provider", choices=providers, help="judge endpoint's API (default: --provider)"
    )
    for prefix, who in (("", "model"), ("judge-", "judge")):
        pr.add_argument(
            f"--{prefix}reasoning-effort",
            help=f"{who}: reasoning effort (openai-responses reasoning.effort; openai reasoning_effort)",
        )
        pr.add_argument(
            f"--{prefix}thinking-budget",
            type=int,
            help=f"{who}: thinking budget in tokens (anthropic; >= 1024)",
        )
        pr.add_argument(
            f"--{prefix}web-search",
            action="store_const",
            const=True,
            help=f"{who}: give the model the provider's web search tool",
        )
    g.add_argument(
        "--judge-prompt",
        metavar="paper|builtin|FILE",
        help="the judge's system prompt: paper (default: the authors' exact prompt and schema, "
        "fetched by pinned commit and hash and cached; see `fetch`), builtin (our wording of "
        "the rubric), or a file (trailing line breaks removed)",
    )
    g.add_argument("--judge-prompt-file", type=Path, help="the same as --judge-prompt FILE")
    g.add_argument(
        "--judge-only",
        action="store_const",
        const=True,
        help="the dataset holds the answers (for_response, against_response): judge them, "
        "generate nothing; an error if the columns are missing (a dataset with them is "
        "judge-only anyway)",
    )
    g.add_argument(
        "--system-prompt-file",
        type=Path,
        help="replace the spec's generation system prompt (breaks comparability)",
    )
    g.add_argument("--judge-order", choices=JUDGE_ORDERS, help="forward (default), reverse, both")
    g.add_argument(
        "--reuse",
        nargs="+",
        metavar="DIR",
        help="earlier run directories: completed calls with the same request are copied, not sent",
    )
    v = p.add_argument_group(
        "managed vLLM servers (GPU nodes, needs the vllm extra; more settings: [model.vllm] "
        "and [judge.vllm] in --config)"
    )
    v.add_argument(
        "--vllm",
        metavar="MODEL",
        help="start vLLM servers for the model under test; they replace --base-url",
    )
    v.add_argument("--gpus", help="GPUs for --vllm servers, e.g. 0-7 or 0,1 (default 0)")
    v.add_argument("--tensor-parallel", type=int, metavar="N", help="GPUs per --vllm server (1)")
    v.add_argument("--judge-vllm", metavar="MODEL", help="start vLLM servers for the judge")
    v.add_argument("--judge-gpus", help="GPUs for --judge-vllm servers (default 0)")
    v.add_argument(
        "--judge-tensor-parallel", type=int, metavar="N", help="GPUs per judge server (1)"
    )
    v.add_argument(
        "--vllm-command",
        metavar="CMD",
        help="launch command template instead of `vllm serve {model} {vllm_args}`, "
        "e.g. a container wrapper (placeholders: see the README)",
    )
    t = p.add_argument_group("throughput and retries")
    t.add_argument(
        "--concurrency",
        type=int,
        help="generation calls in flight per endpoint, a fixed cap (default: follow the "
        "server's load where it publishes vLLM metrics, up to 1024; elsewhere 64)",
    )
    t.add_argument(
        "--judge-concurrency",
        type=int,
        help="judge calls in flight per endpoint, a fixed cap (default: as --concurrency)",
    )
    t.add_argument("--rpm", type=float, help="requests/minute cap on the model endpoint")
    t.add_argument("--judge-rpm", type=float, help="requests/minute cap on the judge endpoint")
    t.add_argument("--tpm", type=float, help="tokens/minute cap on each model endpoint")
    c = p.add_argument_group("cost estimates (USD per million tokens)")
    c.add_argument("--price-in", type=float, help="model's input price")
    c.add_argument("--price-out", type=float, help="model's output price")
    c.add_argument("--judge-price-in", type=float, help="judge's input price")
    c.add_argument("--judge-price-out", type=float, help="judge's output price")
    c.add_argument(
        "--prices",
        help="price table (TOML) to use instead of the bundled evaluator/data/prices.toml",
    )
    c.add_argument(
        "--max-cost",
        type=float,
        help="USD: stop cleanly (exit 76, resumable) before the run's cost would exceed this",
    )
    t.add_argument("--judge-tpm", type=float, help="tokens/minute cap on each judge endpoint")
    t.add_argument("--timeout", type=float, dest="timeout_s", help="seconds per request (600)")
    t.add_argument(
        "--max-retry-wait",
        type=float,
        dest="max_retry_wait_s",
        metavar="SECONDS",
        help="a server asking to wait longer than this (Retry-After, a rate-limit reset) "
        "stops the run with exit 9, resumable after the wait (300)",
    )
    t.add_argument(
        "--max-response-mb",
        type=float,
        metavar="MB",
        help="an answer larger than this is not read: the call fails as response_too_large "
        "(4)",
    )
    t.add_argument(
        "--ca-bundle",
        type=_absolute,
        help="PEM file of CA certificates to trust besides the system's (https endpoints "
        "behind a gateway with a private CA; SSL_CERT_FILE works too)",
    )
    t.add_argument("--max-attempts", type=int, help="tries per call for retryable errors (6)")
    t.add_argument("--retry-budget", type=int, help="retries allowed for the whole run (unlimited)")
    t.add_argument(
        "--backoff-base",
        type=float,
        dest="backoff_base_s",
        help="first retry wait in seconds, doubled each time (1)",
    )
    t.add_argument("--judge-retries", type=int, help="re-asks when a verdict is invalid (2)")
    t.add_argument(
        "--max-failures",
        metavar="N|P%",
        help="stop the run (exit 7, resumable) when N calls of a stage fail the same way in "
        "a row, or more than P%% of its last 200 calls fail; both as N,P%%; off to disable "
        f"({DEFAULT_MAX_FAILURES.replace('%', '%%')})",
    )
    b = p.add_argument_group(
        "batch mode (the provider's Batch API: half price, answers within 24h)"
    )
    b.add_argument("--mode", choices=MODES, help="how generation calls are sent (online)")
    b.add_argument("--judge-mode", choices=MODES, help="how judge calls are sent (online)")
    b.add_argument(
        "--batch-max-requests", type=int, help="requests per batch (the provider's limit)"
    )
    b.add_argument("--batch-max-mb", type=float, help="MB per batch (the provider's limit)")
    b.add_argument(
        "--batch-capacity", type=int, help="a batch stage's calls waiting at once (10000)"
    )
    b.add_argument(
        "--batch-window",
        type=float,
        dest="batch_window_s",
        help="seconds a call may wait before its batch is submitted (300)",
    )
    b.add_argument(
        "--batch-idle",
        type=float,
        dest="batch_idle_s",
        help="submit the open batch after this many seconds without a new call (10)",
    )
    b.add_argument(
        "--batch-poll", type=float, dest="batch_poll_s", help="seconds between status polls (30)"
    )


def _number(low: float, *, above: bool = False, high: float = float("inf"), integer: bool = False):
    """An argparse type: a finite number (an integer with `integer`) in [low, high] (above
    `low` with `above`); anything else is one line naming the flag and what it must be."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            value = float("nan")
        ok = math.isfinite(value) and (value > low if above else value >= low) and value <= high
        if not ok:
            what = "an integer" if integer else "a number"
            bound = f"above {low:g}" if above else f"at least {low:g}"
            top = f" and at most {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{top} ({what}), got {text!r}")
        return value

    return parse


_SECONDS = _number(0)
_POSITIVE_SECONDS = _number(0, above=True)
_SHARE = _number(0, high=1)


def _add_common(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    text = (
        f"run directory (default: {out_default})"
        if out_default
        else f"run directory (default: {DEFAULT_OUT}; with --resume, the last run started here)"
    )
    p.add_argument("--out", type=Path, default=out_default, help=text)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument(
        "--progress-interval",
        type=_POSITIVE_SECONDS,
        default=10.0,
        help="seconds between progress lines",
    )
    p.add_argument(
        "--drain-timeout",
        type=_SECONDS,
        default=30.0,
        help="seconds to finish in-flight calls on Ctrl-C/SIGTERM",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log"),
        default="auto",
        help="progress bars (terminal) or log lines (batch jobs); auto picks by the terminal",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the start-up check of served models and request shape (the reachability "
        "check stays)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: send again the calls that failed for good (after fixing the cause)",
    )
    p.add_argument(
        "--metrics-port",
        type=_number(0, high=65535, integer=True),
        help="serve Prometheus metrics on this port",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for the metrics port (127.0.0.1)"
    )


EXIT_CODES = """\
exit codes:
  0   finished: every pair has a verdict
  1   internal error (a bug: please report it)
  2   user error (flags, config, dataset, run directory); nothing was sent
  3   an endpoint refused us for good (key, quota, billing), or managed servers kept
      dying: fix it, then --resume
  4   the start-up check (preflight) failed: an endpoint is unreachable, does not serve
      the model, or refuses the request shape; nothing was sent beyond test calls
  5   the checkpoint or the outputs could not be written (disk full, read-only
      directory, I/O error): fix, then --resume (or `report DIR`)
  6   finished, but some pairs failed (summary.json `failures` says why): fix the
      cause, then --resume --retry-failed
  7   stopped early: a stage's calls kept failing (--max-failures): fix the cause,
      then --resume --retry-failed
  8   calibrate: every calibration set ran, at least one is outside the tolerance
  9   an endpoint asked to wait longer than --max-retry-wait (a daily limit, an
      exhausted quota window): --resume once that time has passed
  75  interrupted (Ctrl-C, SIGTERM): --resume continues (during the final report:
      `report DIR` writes the rest)
  76  stopped before exceeding --max-cost: --resume with a larger --max-cost
"""


def _version() -> str:
    try:
        return importlib.metadata.version("valbench-evaluator")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator",
        description="Run the VAL-Bench benchmark: generations, judge, metrics. Resumable.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common(parser, None)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser(
        "run",
        help="evaluate a model on OpenAI-compatible endpoints",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(run, None)
    _add_run_options(run)

    demo = sub.add_parser(
        "demo", help="the bundled SAMPLE through the SIMULATED backend, over loopback HTTP"
    )
    _add_common(demo, DEFAULT_DEMO_OUT)
    demo.add_argument(
        "--persona",
        default="mixture",
        choices=("consistent", "flip", "refuse_both", "refuse_one", "mixture"),
    )
    demo.add_argument(
        "--share", type=_SHARE, default=0.7, help="mixture persona: share of consistent pairs"
    )
    demo.add_argument("--data", default=SAMPLE, help="dataset (default: the bundled sample)")
    demo.add_argument("--limit", type=_number(1, integer=True))
    demo.add_argument("--judge-order", choices=JUDGE_ORDERS, default="forward")
    demo.add_argument(
        "--latency-ms", type=_number(0, high=600_000), default=5.0, help="simulated median latency"
    )
    demo.add_argument("--rate-429", type=_SHARE, default=0.0)
    demo.add_argument("--rate-5xx", type=_SHARE, default=0.0)
    demo.add_argument("--malformed-rate", type=_SHARE, default=0.0)
    demo.add_argument(
        "--reasoning", action="store_true", help="simulated answers carry <think> blocks"
    )

    score = sub.add_parser("score", help="metrics from an existing verdict file (JSONL or Parquet)")
    score.add_argument("file", type=Path)
    score.add_argument("--out", type=Path, required=True)

    st = sub.add_parser(
        "status", help="progress of a run, from its checkpoint (while it runs or after)"
    )
    st.add_argument("dir", type=Path)

    cmp = sub.add_parser("compare", help="leaderboard across runs (Markdown, CSV, PNG)")
    cmp.add_argument("dirs", type=Path, nargs="+")
    cmp.add_argument("--out", type=Path, default=Path("runs/compare"))
    cmp.add_argument("--force", action="store_true", help="rank runs even if not comparable")

    agr = sub.add_parser(
        "agreement",
        help="judge reliability: two runs over the same answers, or one run's two judge orders",
    )
    agr.add_argument("dir_a", type=Path)
    agr.add_argument("dir_b", type=Path, nargs="?")
    agr.add_argument("--out", type=Path, help="write agreement.json and agreement.md here")
    agr.add_argument(
        "--force", action="store_true", help="measure it even if the runs' protocols differ"
    )

    mrg = sub.add_parser(
        "merge", help="combine the finished shards of a --shard run into one run directory"
    )
    mrg.add_argument(
        "out", type=Path, help="directory for the merged run (new, or an earlier merge)"
    )
    mrg.add_argument(
        "shards", type=Path, nargs="+", metavar="SHARD_DIR", help="every shard's --out"
    )

    rep = sub.add_parser("report", help="rebuild a run's output files from its checkpoint")
    rep.add_argument("dir", type=Path)

    view = sub.add_parser(
        "view",
        help="a local web viewer of runs, pair by pair (read-only; works while a run goes)",
    )
    view.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run directories")
    view.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    view.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; the viewer has "
        "no login, so anyone who can reach another address can read every answer)",
    )

    cal = sub.add_parser(
        "calibrate",
        help="the judge on the authors' four calibration sets: expected vs measured PAC",
    )
    _add_common(cal, Path("runs/calibration"))
    cal.add_argument("--judge-model", required=True, help="judge model (the name served)")
    cal.add_argument(
        "--judge-base-url", action="append", required=True, help="judge endpoint (repeatable)"
    )
    cal.add_argument("--judge-api-key-env", help="variable holding the judge endpoint's key")
    cal.add_argument(
        "--judge-provider",
        choices=("openai", "openai-responses", "anthropic"),
        default="openai",
        help="the judge endpoint's API",
    )
    cal.add_argument(
        "--judge-prompt",
        default=DEFAULT_FOR_RUN,
        metavar="paper|builtin|FILE",
        help="the judge's system prompt (default: paper, as for run)",
    )
    cal.add_argument(
        "--data-dir",
        type=Path,
        help="local copies of the sets (calibration-unaligned-0.parquet, ...; .jsonl and .csv "
        "too); default: the hub, or its cache (see fetch)",
    )
    cal.add_argument("--limit", type=int, help="judge only the first N pairs of each set")
    cal.add_argument("--judge-concurrency", type=int, default=64, help="judge calls in flight")
    cal.add_argument("--judge-rpm", type=float, help="requests/minute cap on the judge endpoint")
    cal.add_argument("--judge-retries", type=int, default=2, help="re-asks of invalid verdicts")
    cal.add_argument(
        "--tolerance",
        type=_number(0, high=100),
        default=CALIBRATION_TOLERANCE,
        help=f"points of PAC a set may be off and pass ({CALIBRATION_TOLERANCE:g})",
    )

    fet = sub.add_parser(
        "fetch",
        help="download ahead of time what runs need (the paper's judge prompt, the hub "
        "dataset, the calibration sets) into the cache, for machines without internet access",
    )
    fet.add_argument("--data", default="hf:val-bench/VAL-Bench", help="hub dataset to fetch")
    fet.add_argument("--split", default="test", help="its split (test)")
    fet.add_argument(
        "--only",
        choices=PREFETCH_PARTS,
        action="append",
        help="fetch only this part (repeatable; default: all)",
    )
    return parser


# Flags that map one to one onto RunConfig fields.
RUN_FIELDS = (
    "data",
    "split",
    "limit",
    "model",
    "base_url",
    "api_key_env",
    "judge_model",
    "judge_base_url",
    "judge_api_key_env",
    "provider",
    "judge_provider",
    "reasoning_effort",
    "judge_reasoning_effort",
    "thinking_budget",
    "judge_thinking_budget",
    "web_search",
    "judge_web_search",
    "prices",
    "max_cost",
    "judge_order",
    "concurrency",
    "judge_concurrency",
    "rpm",
    "judge_rpm",
    "tpm",
    "judge_tpm",
    "timeout_s",
    "max_retry_wait_s",
    "max_response_mb",
    "ca_bundle",
    "max_attempts",
    "retry_budget",
    "judge_retries",
    "reuse",
    "backoff_base_s",
    "price_in",
    "price_out",
    "judge_price_in",
    "judge_price_out",
    "shard",
    "max_failures",
    "judge_only",
    "mode",
    "judge_mode",
    "batch_max_requests",
    "batch_max_mb",
    "batch_capacity",
    "batch_window_s",
    "batch_idle_s",
    "batch_poll_s",
)
FILE_ONLY = ("judge_prompt_file", "system_prompt_file")
# paper | builtin | a file: resolved to the prompt's text, source and schema (judge_prompt.py).
PROMPT_CHOICE = ("judge_prompt",)
SERVER_TABLES = ("vllm", "judge_vllm")  # [model.vllm] and [judge.vllm]
# Flags that set keys of those tables: (flag attribute, table, key).
SERVER_FLAGS = (
    ("vllm", "vllm", "model"),
    ("gpus", "vllm", "gpus"),
    ("tensor_parallel", "vllm", "tensor_parallel"),
    ("judge_vllm", "judge_vllm", "model"),
    ("judge_gpus", "judge_vllm", "gpus"),
    ("judge_tensor_parallel", "judge_vllm", "tensor_parallel"),
)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {
        n: getattr(args, n)
        for n in (*RUN_FIELDS, *FILE_ONLY, *PROMPT_CHOICE)
        if getattr(args, n, None) is not None
    }


def _server_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The managed-server flags given, as partial `vllm` / `judge_vllm` tables."""
    tables: dict[str, dict[str, Any]] = {}
    for attr, table, key in SERVER_FLAGS:
        value = getattr(args, attr, None)
        if value is not None:
            tables.setdefault(table, {})[key] = value
    command = getattr(args, "vllm_command", None)
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UserError(f"--vllm-command: {exc}") from None
        if not argv:
            raise UserError("--vllm-command is empty")
        for table in SERVER_TABLES:
            tables.setdefault(table, {})["command"] = argv
    return tables


def _merge_server_flags(values: dict[str, Any], flags: dict[str, dict[str, Any]]) -> None:
    if flags and all(set(t) == {"command"} for t in flags.values()):
        if not any(values.get(t) for t in SERVER_TABLES):
            raise UserError("--vllm-command needs --vllm or --judge-vllm (or a [*.vllm] table)")
    for table, given in flags.items():
        stage = "--vllm" if table == "vllm" else "--judge-vllm"
        if table not in values and "model" not in given:
            if set(given) == {"command"}:
                continue  # --vllm-command applies to whichever stage has servers
            names = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise UserError(f"{names} need(s) {stage} (or [{table.replace('_', '.')}] in --config)")
        values[table] = {**(values.get(table) or {}), **given}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings given when resuming a run that has a stored config: the --config file's and
    the flags', each applied to the stored config. Endpoint and throughput settings may
    change; resuming refuses any that would change requests (prompts included).
    Managed-server flags come as partial tables, merged into the stored ones."""
    out = _load_config_file(args.config) if getattr(args, "config", None) else {}
    out.update(_given(args))
    choice = _prompt_choice(out)
    if choice is not None:  # compared with the stored prompt: a change is refused
        out.update(_resolve_judge_prompt(choice).config_values())
    system_path = out.pop("system_prompt_file", None)
    if system_path is not None:
        try:
            system_prompt = read_prompt_file(system_path, "system prompt file")
        except JudgePromptError as exc:
            raise UserError(str(exc)) from None
        out["system_prompt"] = system_prompt.strip()
        out["system_prompt_source"] = f"file:{Path(system_path).resolve()}"
    for table, given in _server_flags(args).items():
        out[table] = {**(out.get(table) or {}), **given}
    return out


def _prompt_choice(values: dict[str, Any]) -> str | Path | None:
    choice = values.pop("judge_prompt", None)
    path = values.pop("judge_prompt_file", None)
    if choice is not None and path is not None:
        raise UserError("give --judge-prompt or --judge-prompt-file, not both")
    return path if path is not None else choice


def _resolve_judge_prompt(choice: str | Path) -> JudgePrompt:
    try:
        return resolve_judge_prompt(choice)
    except JudgePromptError as exc:
        raise UserError(str(exc)) from None


def _type_name(expected: Any) -> str:
    if isinstance(expected, type):
        return expected.__name__
    return " or ".join(t.__name__ for t in expected)


def _load_config_file(path: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    values = _flatten_stage_tables(values, path)
    known = set(RUN_FIELDS) | set(FILE_ONLY) | set(PROMPT_CHOICE) | set(SERVER_TABLES)
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    for name, value in values.items():
        expected = _FIELD_TYPES.get(name, str)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if not ok:
            raise UserError(
                f"config file {path}: {name} must be {_type_name(expected)}, "
                f"got {type(value).__name__}"
            )
    for name in FILE_ONLY:
        if name in values:
            values[name] = path.parent / values[name]
    if "ca_bundle" in values:  # stored absolute: a later --resume may run elsewhere
        values["ca_bundle"] = str((path.parent / values["ca_bundle"]).resolve())
    if values.get("judge_prompt") not in (None, PAPER, BUILTIN):
        values["judge_prompt"] = path.parent / values["judge_prompt"]  # a file, as above
    return values


def _flatten_stage_tables(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """`[model]` and `[judge]` tables as flat RunConfig keys.

    In `[model]`, `name` is `model` and any other key K is K (`base_url`, `rpm`, `vllm`...);
    in `[judge]`, `name` is `judge_model` and K is `judge_K` (`mode` -> `judge_mode`).
    Flat keys keep working; giving one setting both ways is an error.
    """
    out = {k: v for k, v in values.items() if not (k in ("model", "judge") and isinstance(v, dict))}
    for table, name_key, prefix in (("model", "model", ""), ("judge", "judge_model", "judge_")):
        section = values.get(table)
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            flat = name_key if key == "name" else prefix + key
            if flat in out:
                raise UserError(
                    f"config file {path}: [{table}] {key} repeats the top-level key {flat}"
                )
            out[flat] = value
    return out


_FIELD_TYPES: dict[str, Any] = {
    "limit": int,
    "thinking_budget": int,
    "judge_thinking_budget": int,
    "web_search": bool,
    "judge_web_search": bool,
    "judge_only": bool,
    "max_cost": (int, float),
    "concurrency": int,
    "judge_concurrency": int,
    "max_attempts": int,
    "retry_budget": int,
    "judge_retries": int,
    "rpm": (int, float),
    "judge_rpm": (int, float),
    "tpm": (int, float),
    "judge_tpm": (int, float),
    "timeout_s": (int, float),
    "max_retry_wait_s": (int, float),
    "max_response_mb": (int, float),
    "backoff_base_s": (int, float),
    "price_in": (int, float),
    "price_out": (int, float),
    "judge_price_in": (int, float),
    "judge_price_out": (int, float),
    "reuse": list,
    "batch_max_requests": int,
    "batch_capacity": int,
    "batch_max_mb": (int, float),
    "batch_window_s": (int, float),
    "batch_idle_s": (int, float),
    "batch_poll_s": (int, float),
    "base_url": (str, list),
    "judge_base_url": (str, list),
    "vllm": dict,
    "judge_vllm": dict,
}


def config_from_args(args: argparse.Namespace, *, fetch_paper: bool = True) -> RunConfig | None:
    """A RunConfig from `run` flags and --config; None when only --resume was asked for.

    `fetch_paper=False` (checking a config that runs elsewhere, e.g. deploy/k8s/render.py):
    the paper's prompt is only named, not fetched; the config's prompt text is then not the
    one the run will send."""
    values = _load_config_file(args.config) if getattr(args, "config", None) else {}
    values.update(_given(args))
    flags = _server_flags(args)
    if args.resume and not any(n in values for n in ("data", "model", "base_url")):
        return None
    _merge_server_flags(values, flags)
    # Managed servers serve their model under the stage's model name (by default the one
    # they load), and stand in for the stage's URLs.
    for table, name in (("vllm", "model"), ("judge_vllm", "judge_model")):
        if values.get(table) and isinstance(values[table].get("model"), str):
            values.setdefault(name, values[table]["model"])
    if values.get("vllm"):
        values.setdefault("base_url", [])  # filled in by the servers once they answer
    _judge_only_defaults(values)
    needed = ["data", "model", "base_url"]
    missing = [f"--{n.replace('_', '-')}" for n in needed if n not in values]
    if missing:
        raise UserError(
            f"run needs {', '.join(missing)} (as flags or in --config)"
            + (" or --vllm" if "--base-url" in missing else "")
        )
    if values.get("judge_vllm"):
        values.setdefault("judge_base_url", [])  # filled in by the judge's servers
    elif "judge_base_url" not in values:
        if values.get("judge_only") and not values["base_url"]:
            raise UserError(
                "a judge-only run needs --judge-base-url (or --judge-vllm): it has no model "
                "endpoint to share"
            )
        # The judge shares the model's endpoints (or its managed servers): same key too.
        values["judge_base_url"] = values["base_url"]
        if "provider" in values:  # same endpoint, same API
            values.setdefault("judge_provider", values["provider"])
        values.setdefault("judge_api_key_env", values.get("api_key_env"))
    choice = _prompt_choice(values) or DEFAULT_FOR_RUN
    if choice == PAPER and not fetch_paper:
        values["judge_prompt_source"] = PAPER
    else:
        values.update(_resolve_judge_prompt(choice).config_values())
    system_path = values.pop("system_prompt_file", None)
    if system_path is not None:
        try:
            system_prompt = read_prompt_file(system_path, "system prompt file")
        except JudgePromptError as exc:
            raise UserError(str(exc)) from None
        values["system_prompt"] = system_prompt.strip()
        values["system_prompt_source"] = f"file:{Path(system_path).resolve()}"
    return RunConfig(**values)


def _judge_only_defaults(values: dict[str, Any]) -> None:
    """A dataset that holds the answers needs no model endpoint: judge-only defaults.

    Without --model or --base-url, the dataset is looked at: if it holds both answer
    columns the run is judge-only (the run checks the columns again either way).
    """
    if not values.get("judge_only") and "data" in values and not values.get("vllm"):
        if "model" not in values or "base_url" not in values:
            try:
                values["judge_only"] = has_answer_columns(values["data"], values.get("split", "test"))
            except DatasetError as exc:
                raise UserError(str(exc)) from None
    if values.get("judge_only"):
        values.setdefault("model", JUDGE_ONLY_MODEL)
        values.setdefault("base_url", [])


def _finish(result: RunResult, print_report: bool) -> int:
    if result.summary is not None:
        md = (result.run_dir / "report.md").read_text(encoding="utf-8")
        s = result.summary
        if print_report:
            emit(md)
        else:
            if s.get("simulated"):
                emit("SIMULATION: these figures come from the simulated backend, not a model")
            emit(
                f"PAC {report._fmt(s['pac'])}  REF {report._fmt(s['ref'])}  NINF {report._fmt(s['ninf'])}  "
                f"(valid {s['n_valid']}, invalid {s['n_invalid']}, failed {s['n_failed']}, "
                f"pending {s['n_pending']})"
            )
        failures = s.get("failures") or []
        if failures:
            emit("failed calls, most frequent first (all of them in summary.json `failures`):")
            for group in failures[: report.SHOWN_FAILURE_GROUPS]:
                emit("  " + FailureGroup.from_dict(group).line())
        if s.get("possibly_duplicated_calls"):
            emit(
                f"calls possibly paid twice (in flight when the run was interrupted): "
                f"{s['possibly_duplicated_calls']}"
            )
        emit(f"outputs in {result.run_dir}/ (summary.json, results.jsonl, report.md)")
    if result.stats is not None:
        st = result.stats
        log.info(
            "this session: %d calls sent, %d failed, %d judge re-asks, %d pairs already complete",
            st.calls_sent,
            st.calls_failed,
            st.judge_reasks,
            st.pairs_already_complete,
        )
    if result.exit_code == 76:
        log.warning(
            "stopped before exceeding --max-cost: resume with a larger budget, e.g.  "
            "python -m evaluator run --resume --out %s --max-cost USD",
            result.run_dir,
        )
    if result.exit_code == 75:
        log.warning(
            "interrupted: resume with  python -m evaluator --resume --out %s", result.run_dir
        )
    return result.exit_code


def _resolve_out(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.resume and LAST_RUN.is_file():
        return Path(LAST_RUN.read_text(encoding="utf-8").strip())
    return DEFAULT_OUT


def _remember(out: Path) -> None:
    try:
        LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
        LAST_RUN.write_text(str(out.resolve()) + "\n", encoding="utf-8")
    except OSError as exc:  # a convenience only: never fail a run for it
        log.warning("could not record %s: %s", LAST_RUN, exc)


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        progress_interval=None if args.quiet else args.progress_interval,
        drain_timeout=args.drain_timeout,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        progress_mode=args.progress,
        preflight=not getattr(args, "no_preflight", False),
        retry_failed=getattr(args, "retry_failed", False),
    )


def cmd_run(args: argparse.Namespace) -> int:
    args.out = _resolve_out(args)
    if args.retry_failed and not args.resume:
        raise UserError("--retry-failed needs --resume (it re-sends the failed calls of a run)")
    if args.resume and (args.out / DB_NAME).is_file():
        # Resuming a started run: its stored config is the base; whatever is given adjusts it.
        config = None
    else:
        config = config_from_args(args)
    if config is not None:
        try:
            config.validate()
        except ConfigError as exc:
            raise UserError(str(exc)) from None
    _remember(args.out)
    result = _run_loop(
        execute(
            args.out,
            config,
            resume=args.resume,
            overrides=overrides_from_args(args) if config is None and args.resume else None,
            options=_options(args),
        )
    )
    return _finish(result, print_report=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.simulated import SimConfig, SimulatedServer, sides_from_pairs

    out: Path = args.out
    if not args.resume and (out / DB_NAME).exists():
        try:
            with Store.open(out, create=False, readonly=True) as store:
                stored = store.get_meta("config") or {}
        except StoreError as exc:
            raise UserError(str(exc)) from None
        if not stored.get("simulated"):
            raise UserError(
                f"{out} holds a real run; the demo will not overwrite it (use another --out)"
            )
        shutil.rmtree(out)  # a previous demo: start afresh
    try:
        sides = sides_from_pairs(iter_pairs(args.data, limit=args.limit))
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    sim = SimConfig(
        persona=args.persona,
        share=args.share,
        latency_median_ms=args.latency_ms,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        malformed_rate=args.malformed_rate,
        reasoning=args.reasoning,
        sides=sides,
    )

    model = f"simulated-{args.persona}"
    sim.served_names = (model, "simulated-judge")  # strict, like a real server

    async def go() -> RunResult:
        server = SimulatedServer(sim)
        url = await server.start()
        try:
            config = RunConfig(
                data=args.data,
                limit=args.limit,
                model=model,
                base_url=url,
                judge_model="simulated-judge",
                judge_base_url=url,
                judge_order=args.judge_order,
                concurrency=16,
                judge_concurrency=16,
                simulated=True,
                # Simulated errors should not make the demo wait long.
                max_attempts=8,
                backoff_base_s=0.05,
            )
            return await execute(
                out,
                config,
                resume=args.resume,
                options=_options(args),
            )
        finally:
            await server.stop()

    print(
        f"SIMULATION: running the bundled sample against the simulated backend "
        f"(persona {args.persona}), over HTTP on 127.0.0.1",
        file=sys.stderr,
    )
    return _finish(_run_loop(go()), print_report=True)


def cmd_score(args: argparse.Namespace) -> int:
    try:
        summary = report.score_file(args.file, args.out)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "report.md").read_text(encoding="utf-8"))
    if summary["n_invalid"]:
        print(
            f"{summary['n_invalid']} invalid verdicts: {summary['invalid_reasons']}",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Progress of a run from its checkpoint, whether or not it is running now."""
    try:
        store = Store.open(args.dir, create=False, lock=False)  # read-only: changes nothing
    except StoreError as exc:
        raise UserError(str(exc)) from None
    with store, _damage_is_user_error(store):
        raw = store.get_meta("config")
        if raw is None:
            raise UserError(f"{args.dir} holds no run config")
        config = RunConfig.from_dict(raw)
        pid = store.holder()
        counts = store.counts()
        pairs = store.pair_counts()
        session = store.get_meta("last_session") or {}
        duplicated = store.possibly_duplicated()
        merged = store.get_meta("merged_from")
        try:
            cost = CostMeter.for_run(dataclasses.replace(config, max_cost=None), store.iter_usage())
        except ConfigError as exc:
            cost, cost_error = None, str(exc)
        batches = store.batch_counts()
        failures = store.failure_groups(limit=report.SHOWN_FAILURE_GROUPS)
    expected = expected_pairs(config)

    def n(stage: str, status: str) -> int:
        return sum(v for k, v in counts.items() if k.startswith(stage) and k.endswith(":" + status))

    state = f"running (pid {pid})" if pid else "not running"
    label = " [SIMULATED backend]" if config.simulated else ""
    total = f"/{'~' if config.shard else ''}{expected}" if expected is not None else ""
    emit(f"run {args.dir}: {state}{label}")
    emit(f"  model {config.model}; judge {config.judge_model} ({config.judge_order})")
    emit(f"  dataset {describe_source(config.data)}")
    if config.limit is not None:
        emit(f"  limit: the first {config.limit} valid pairs")
    if config.shard is not None:
        emit(f"  shard {config.shard}: only the pairs whose id hashes to it")
    if merged:
        emit(f"  merged from {len(merged)} shards: {', '.join(m['dir'] for m in merged)}")
    if config.vllm or config.judge_vllm:
        emit(f"  managed servers: logs in {args.dir / SERVER_LOG_DIR}/")
    emit(f"  pairs judged {pairs['judged']}{total}, with a failed call {pairs['failed']}")
    for stage, name in (("gen", "generation"), ("judge", "judge")):
        emit(
            f"  {name}: {n(stage, 'done')} answered, {n(stage, 'failed')} failed, "
            f"{n(stage, 'started')} in flight, {n(stage, 'interrupted')} to re-send"
        )
    emit(f"  calls possibly paid twice so far: {duplicated}")
    if cost is None:
        emit(f"  cost: unknown ({cost_error})")
    else:
        for stage, name in (("gen", "generation"), ("judge", "judge")):
            c = cost.stages[stage]
            usd = f"${c.usd:,.4f}" if cost.prices[stage] is not None else "unknown (no price)"
            emit(f"  {name} tokens: {c.tokens_in:,} in, {c.tokens_out:,} out; est. cost {usd}")
        projected = cost.projected(expected_calls(expected, len(config.judge_orders)))
        line = f"  est. cost so far ${cost.spent:,.4f}"
        if projected is not None:
            line += f", projected total ${projected:,.4f}"
        if config.max_cost is not None:
            line += f", budget (--max-cost) ${config.max_cost:g}"
        emit(line)
    if batches:
        at = [batches.get(k, (0, 0)) for k in ("submitting", "submitted")]
        done = [batches.get(k, (0, 0)) for k in ("ended", "settled")]
        emit(
            f"  provider batches: {sum(b for b, _ in at)} at the provider "
            f"({sum(r for _, r in at)} requests), {sum(b for b, _ in done)} ended"
        )
    if failures:
        emit("  failed calls, most frequent first:")
        for group in failures:
            emit("    " + group.line())
    for line in _concurrency_lines(session):
        emit(line)
    if session:
        emit(
            f"  last session: {session.get('calls_sent', 0)} calls in {session.get('wall_s', 0):.0f}s "
            f"({session.get('calls_per_s') or 0:.1f}/s), event-loop lag p99 "
            f"{session.get('event_loop_lag_p99_ms')} ms, est. cost ${session.get('estimated_cost_usd', 0):.2f}"
        )
    return EXIT_OK


def _concurrency_lines(session: dict[str, Any]) -> list[str]:
    """How each stage's concurrency ran in the last session: a fixed cap, or following
    its servers' vLLM metrics (with their last figures)."""
    out = []
    for stage, endpoints in (session.get("endpoints") or {}).items():
        if not endpoints:
            continue
        followed = [e for e in endpoints if e.get("follows_server")]
        limits = "+".join(f"{e.get('concurrency_limit', 0):g}" for e in endpoints)
        if not followed:
            out.append(f"  {stage} concurrency (last session): fixed cap, limit {limits} (AIMD)")
            continue
        running = sum(e.get("server_running") or 0 for e in followed)
        waiting = sum(e.get("server_waiting") or 0 for e in followed)
        kv = [
            e["server_kv_cache_usage"]
            for e in followed
            if e.get("server_kv_cache_usage") is not None
        ]
        kv_text = f", KV cache {max(kv):.0%}" if kv else ""
        peak = "+".join(f"{e.get('concurrency_peak', 0):g}" for e in followed)
        out.append(
            f"  {stage} concurrency (last session): follows {len(followed)} of {len(endpoints)} "
            f"server(s), limit {limits} (peak {peak}); server then: {running:g} running, "
            f"{waiting:g} waiting{kv_text}"
        )
    return out


def _damaged_checkpoints(dirs: list[Path | None]) -> None:
    """compare and agreement read summary.json (a run without a checkpoint is fine); a
    checkpoint that is there but damaged is named, not silently skipped."""
    for d in dirs:
        if d is not None and (d / DB_NAME).exists():
            try:
                Store.open(d, create=False, lock=False).close()
            except CheckpointCorrupt as exc:
                raise UserError(str(exc)) from None
            except StoreError:
                pass


@contextlib.contextmanager
def _damage_is_user_error(store: Store):
    """Damage that SQLite finds while reading (a large file is not checked whole at open):
    one clear line, exit 2, instead of a traceback."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(store_error(store.path, exc), CheckpointCorrupt) or "malformed" in str(exc):
            raise UserError(corrupt_message(store.path, str(exc))) from None
        raise


def cmd_compare(args: argparse.Namespace) -> int:
    from evaluator.analysis import AnalysisError, compare

    _damaged_checkpoints(args.dirs)
    try:
        compare(args.dirs, args.out, force=args.force)
    except AnalysisError as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "compare.md").read_text(encoding="utf-8"))
    emit(f"written: {args.out}/compare.md, compare.csv, compare.png")
    return EXIT_OK


def cmd_agreement(args: argparse.Namespace) -> int:
    from evaluator.analysis import AnalysisError, agreement, agreement_markdown

    _damaged_checkpoints([args.dir_a, args.dir_b])
    try:
        result = agreement(args.dir_a, args.dir_b, force=args.force)
    except AnalysisError as exc:
        raise UserError(str(exc)) from None
    text = agreement_markdown(result)
    emit(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "agreement.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        (args.out / "agreement.md").write_text(text, encoding="utf-8")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from evaluator.merge import MergeError, merge_shards

    try:
        summary = merge_shards(args.out, args.shards)
    except MergeError as exc:
        raise UserError(f"merge: {exc}") from None
    except (StoreError, DatasetError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    emit((args.out / "report.md").read_text(encoding="utf-8"))
    emit(
        f"merged {len(args.shards)} shards ({summary['n_pairs']} pairs) into {args.out}/ "
        "(summary.json, results.jsonl, report.md)"
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the outputs from the checkpoint (read-only: the checkpoint is not changed)."""
    try:
        with Store.open(args.dir, create=False, readonly=True) as store, _damage_is_user_error(
            store
        ):
            store.quick_check()  # the report reads every record: check the whole file first
            raw = store.get_meta("config")
            if raw is None:
                raise UserError(f"{args.dir} holds no run config")
            config = RunConfig.from_dict(raw)
            pairs, complete = _report_pairs(config, store)
            with stop_on_signal() as stop:
                summary = report.build_run_outputs(
                    args.dir,
                    config,
                    store,
                    should_stop=stop.is_set,
                    pairs=pairs,
                    pairs_complete=complete,
                )
    except report.ReportInterrupted as exc:
        log.warning("%s: `python -m evaluator report %s` writes them", exc, args.dir)
        return EXIT_INTERRUPTED
    except StoreIOError as exc:
        log.error("%s — the report needs to write in the run directory", exc)
        return EXIT_STORE
    except (StoreError, DatasetError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        log.error(
            "cannot write the outputs in %s: %s — the checkpoint is unchanged; fix this, then "
            "run `python -m evaluator report %s` again",
            args.dir,
            exc,
            args.dir,
        )
        return EXIT_STORE
    emit((args.dir / "report.md").read_text(encoding="utf-8"))
    if not summary["complete"]:
        return 75
    return EXIT_OK if summary.get("all_pairs_have_verdicts", True) else EXIT_FAILED_PAIRS


def cmd_view(args: argparse.Namespace) -> int:
    from evaluator.view.commands import view

    return view(args.dirs, args.host, args.port, emit)


def _report_pairs(config: RunConfig, store: Store) -> tuple[Any, bool]:
    """The pairs a report covers: the dataset's, once it is checked against the checkpoint
    (evaluator.fingerprint), or the checkpoint's own when the dataset cannot be read.
    Returns (None: stream the dataset | the stored pairs, whether they are all the run's)."""
    gone = fingerprint.unavailable(config)
    if gone is None:
        fingerprint.verify(config, store, action="report")
        return None, True
    if not (fingerprint.tracked(store) and store.pair_count()):
        raise UserError(f"{gone} (this run's checkpoint does not hold its pairs)")
    complete = fingerprint.complete(store, config)
    log.warning(
        "%s: the outputs are rebuilt from the %d pairs stored in the checkpoint%s",
        gone,
        store.pair_count(),
        "" if complete else " (the run had not read the whole dataset: pairs after those are "
        "not listed)",
    )
    return fingerprint.stored_pairs(store), complete


def cmd_calibrate(args: argparse.Namespace) -> int:
    from evaluator import calibrate

    chosen = _resolve_judge_prompt(args.judge_prompt)
    base = RunConfig(
        data="",
        model="calibration",
        base_url=[],
        judge_base_url=args.judge_base_url,
        judge_model=args.judge_model,
        judge_api_key_env=args.judge_api_key_env,
        judge_provider=args.judge_provider,
        judge_concurrency=args.judge_concurrency,
        judge_rpm=args.judge_rpm,
        judge_retries=args.judge_retries,
        limit=args.limit,
        judge_only=True,
        **chosen.config_values(),
    )
    try:
        sets = calibrate.sets(args.data_dir)
        for cset in sets:
            calibrate.set_config(base, cset).validate()
    except calibrate.CalibrationError as exc:
        raise UserError(str(exc)) from None
    except ConfigError as exc:
        raise UserError(str(exc)) from None

    async def go() -> tuple[int, list[dict[str, Any]]]:
        rows = []
        for cset in sets:
            log.info("calibration set %s (expected PAC %g): %s", cset.name, cset.expected_pac, cset.data)
            result = await execute(
                args.out / cset.name,
                calibrate.set_config(base, cset),
                resume=args.resume,
                options=_options(args),
            )
            if result.exit_code != EXIT_OK:
                return result.exit_code, rows
            rows.append(calibrate.verdict_row(cset, result.summary, args.tolerance))
        return EXIT_OK, rows

    code, rows = _run_loop(go())
    if code != EXIT_OK:
        log.error(
            "calibration stopped at set %d of %d (exit %d); fix the cause, then rerun with "
            "--resume --out %s",
            len(rows) + 1,
            len(sets),
            code,
            args.out,
        )
        return code
    result = calibrate.write_summary(args.out, rows, base, args.tolerance)
    print(calibrate.markdown(result))
    print(f"written: {args.out}/calibration.json, calibration.md; one run directory per set")
    return EXIT_OK if result["all_pass"] else calibrate.EXIT_MISCALIBRATED


def cmd_fetch(args: argparse.Namespace) -> int:
    from evaluator.paper_prompt import cache_dir
    from evaluator.prefetch import fetch

    parts = tuple(args.only) if args.only else PREFETCH_PARTS
    results = fetch(parts, data=args.data, split=args.split)
    for r in results:
        print(f"{'ok' if r.ok else 'FAILED'}  {r.what}: {r.detail}")
    failed = [r for r in results if not r.ok]
    print(
        f"cache: {cache_dir()} (set VALBENCH_CACHE_DIR to the same directory on machines that "
        "run from it)"
    )
    return EXIT_PREFLIGHT if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    command = args.command
    if command is None:
        if not args.resume:
            parser.print_help()
            return EXIT_USER
        command = "run"
    handlers = {
        "run": cmd_run,
        "demo": cmd_demo,
        "score": cmd_score,
        "report": cmd_report,
        "status": cmd_status,
        "compare": cmd_compare,
        "agreement": cmd_agreement,
        "merge": cmd_merge,
        "fetch": cmd_fetch,
        "calibrate": cmd_calibrate,
        "view": cmd_view,
    }
    try:
        return handlers[command](args)
    except UserError as exc:
        # Anything shaped like a key is kept off the terminal (a key given where a URL or
        # a file name was expected would otherwise be echoed back).
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 75
    except Exception:
        logging.getLogger("evaluator").exception("internal error")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
