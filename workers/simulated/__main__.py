"""`python -m workers.simulated --port N`: run the SIMULATED OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

from workers.simulated import personas
from workers.simulated.batching import BatchingConfig
from workers.simulated.config import SimConfig
from workers.simulated.data import sides_from_file
from workers.simulated.server import SimulatedServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workers.simulated",
        description="SIMULATED OpenAI-compatible chat server (not a language model).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--tls-cert", type=Path, help="serve https with this PEM certificate (chain)")
    p.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    p.add_argument("--persona", choices=personas.PERSONAS, default="consistent")
    p.add_argument(
        "--judge-persona",
        choices=personas.JUDGE_PERSONAS,
        default="faithful",
        help="how the simulated judge reads answers (lenient: a miscalibrated judge)",
    )
    p.add_argument("--share", type=float, default=0.7, help="mixture: share of consistent pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dataset", help="dataset (path or 'sample') so the model knows each question's side"
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="median latency (lognormal)")
    p.add_argument("--latency-sigma", type=float, default=0.5)
    p.add_argument("--rate-429", type=float, default=0.0)
    p.add_argument("--rate-5xx", type=float, default=0.0)
    p.add_argument("--malformed-rate", type=float, default=0.0, help="share of truncated verdicts")
    p.add_argument("--retry-after", type=float, default=0.0, help="seconds sent with each 429")
    p.add_argument("--reasoning", action="store_true", help="prepend <think> blocks to answers")
    p.add_argument("--rate-reset", type=float, default=0.0, help="share of responses cut mid-body")
    p.add_argument("--rate-stall", type=float, default=0.0, help="share of requests that stall")
    p.add_argument("--stall", type=float, default=5.0, help="seconds a stalled request waits")
    p.add_argument("--burst", type=int, default=1, help="429/5xx faults repeat this many times")
    p.add_argument("--api-key", help="require this bearer key (401 otherwise)")
    p.add_argument("--fail-auth-after", type=int, help="401 to every request after this many")
    p.add_argument("--quota-after", type=int, help="429 insufficient_quota after this many")
    p.add_argument(
        "--rpm-limit", type=float, help="enforce requests/min (429 + x-ratelimit headers)"
    )
    p.add_argument("--tpm-limit", type=float, help="enforce tokens/min, counting max_tokens")
    p.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        help="serve this model name (repeatable), as vLLM does: requests for any other name "
        "get the server's 404 (default names: simulated-model, simulated-judge)",
    )
    p.add_argument(
        "--any-model",
        action="store_true",
        help="answer requests for any model name (no real server does this)",
    )
    p.add_argument(
        "--flavor",
        choices=("vllm", "openai"),
        default="vllm",
        help="whose error bodies chat completions copy: vLLM's server or api.openai.com",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=32768,
        help="context window in tokens (prompt + max_tokens; a token is 4 request bytes)",
    )
    p.add_argument(
        "--unserve-after",
        type=int,
        help="after this many requests, serve no model name any more (404 to all)",
    )
    p.add_argument(
        "--max-output-tokens",
        type=int,
        help="most output tokens a request may ask for (openai flavor and Messages)",
    )
    p.add_argument("--batch-delay", type=float, default=0.0, help="seconds until a batch ends")
    p.add_argument(
        "--batch-fail-every", type=int, default=0, help="fail every k-th new batch request once"
    )
    p.add_argument(
        "--batch-expire-every", type=int, default=0, help="expire every k-th new batch request once"
    )
    p.add_argument("--batch-limit", type=int, help="refuse batches with more requests than this")
    g = p.add_argument_group(
        "continuous batching (a SIMULATED GPU; see workers/simulated/batching.py)",
        "With --batching, answers are released by a simulated vLLM-style engine and GET "
        "/metrics serves vLLM's metrics (vllm:num_requests_running, ...). A step costs "
        "step-ms + seq-ms x sequences + prefill-token-ms x prompt tokens computed + "
        "kv-ktoken-ms x thousands of KV tokens held.",
    )
    d = BatchingConfig()
    g.add_argument("--batching", action="store_true", help="turn the simulated GPU on")
    g.add_argument(
        "--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences per batch (%(default)s)"
    )
    g.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=d.kv_cache_tokens,
        help="KV-cache budget in tokens; a request holds prompt + output (%(default)s)",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=d.max_num_batched_tokens,
        help="tokens per step, decode first, then prompt chunks (%(default)s)",
    )
    g.add_argument(
        "--step-ms", type=float, default=d.step_ms, help="fixed ms per step (%(default)s)"
    )
    g.add_argument(
        "--seq-ms", type=float, default=d.seq_ms, help="ms per sequence in a step (%(default)s)"
    )
    g.add_argument(
        "--prefill-token-ms",
        type=float,
        default=d.prefill_token_ms,
        help="ms per prompt token computed (%(default)s)",
    )
    g.add_argument(
        "--kv-ktoken-ms",
        type=float,
        default=d.kv_ktoken_ms,
        help="ms per step per 1,000 tokens held in the KV cache (%(default)s)",
    )
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=d.prefix_caching,
        help="reuse a cached system-message prefix instead of prefilling it (on, as in vLLM V1)",
    )
    g.add_argument(
        "--output-tokens", type=int, help="tokens each answer decodes (default: its text's length)"
    )
    g.add_argument(
        "--judge-output-tokens", type=int, help="tokens each verdict decodes (default: its length)"
    )
    g.add_argument(
        "--output-sigma",
        type=float,
        default=d.output_sigma,
        help="spread of those lengths: lognormal sigma around them, mean kept (%(default)s)",
    )
    return p.parse_args(argv)


def _batching(args: argparse.Namespace) -> BatchingConfig | None:
    if not args.batching:
        return None
    return BatchingConfig(
        max_num_seqs=args.max_num_seqs,
        kv_cache_tokens=args.kv_cache_tokens,
        max_num_batched_tokens=args.max_num_batched_tokens,
        step_ms=args.step_ms,
        seq_ms=args.seq_ms,
        prefill_token_ms=args.prefill_token_ms,
        kv_ktoken_ms=args.kv_ktoken_ms,
        prefix_caching=args.enable_prefix_caching,
        output_tokens=args.output_tokens,
        judge_output_tokens=args.judge_output_tokens,
        output_sigma=args.output_sigma,
        seed=args.seed,
    )


async def serve(args: argparse.Namespace) -> None:
    sides = sides_from_file(args.dataset) if args.dataset else {}
    config = SimConfig(
        persona=args.persona,
        judge_persona=args.judge_persona,
        share=args.share,
        seed=args.seed,
        latency_median_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        malformed_rate=args.malformed_rate,
        retry_after_s=args.retry_after,
        reasoning=args.reasoning,
        sides=sides,
        rate_reset=args.rate_reset,
        rate_stall=args.rate_stall,
        stall_s=args.stall,
        burst=args.burst,
        api_key=args.api_key,
        fail_auth_after=args.fail_auth_after,
        quota_after=args.quota_after,
        rpm_limit=args.rpm_limit,
        tpm_limit=args.tpm_limit,
        served_names=tuple(args.served_model_name),
        any_model=args.any_model,
        flavor=args.flavor,
        max_model_len=args.max_model_len,
        max_output_tokens=args.max_output_tokens,
        unserve_after=args.unserve_after,
        batch_delay_s=args.batch_delay,
        batch_fail_every=args.batch_fail_every,
        batch_expire_every=args.batch_expire_every,
        batch_limit=args.batch_limit,
        batching=_batching(args),
    )
    tls = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    server = SimulatedServer(config)
    url = await server.start(args.host, args.port, ssl_context=tls)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(url.rsplit(":", 1)[1].split("/")[0])
        tmp.replace(args.port_file)
    names = "any model" if args.any_model else ", ".join(sorted(server.served_names))
    gpu = f"; a SIMULATED GPU batching up to {args.max_num_seqs}" if args.batching else ""
    print(
        f"SIMULATED OpenAI-compatible server (persona {args.persona}; serving {names}{gpu}) "
        f"on {url}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        _batching(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
