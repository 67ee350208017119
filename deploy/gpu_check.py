"""On a GPU node: the evaluator's throughput with default settings, as a share of vLLM's own benchmark.

    python deploy/gpu_check.py google/gemma-3-27b-it --gpus 0 --out runs/gpu-check
    python deploy/gpu_check.py MODEL --pairs 500 -- --max-model-len 16384   # flags after --
                                                                            # go to vllm serve

Needs vLLM (`pip install -e '.[vllm]'`), a GPU and the model's weights. Steps:

1. `vllm serve MODEL` on one GPU (`--gpus`), prefix caching on as the evaluator's
   managed servers run it; waits until GET /health answers.
2. A pilot evaluator run (`--pilot-pairs` synthetic pairs) measures the mean prompt
   and output tokens of the evaluator's calls (its generations and verdicts), so
   that the benchmark below sends requests of the same shape.
3. vLLM's own benchmark at full load: `vllm bench serve --backend openai-chat
   --endpoint /v1/chat/completions --dataset-name random --random-input-len I
   --random-output-len O --ignore-eos --request-rate inf --num-prompts 3*pairs
   --save-result` (flags as in vLLM's "vllm bench serve" CLI reference,
   docs.vllm.ai/en/stable/cli/bench/serve/, and vllm/benchmarks/serve.py: the
   result file's `output_throughput`, `request_throughput`, `duration`,
   `completed`, `failed`).
4. The evaluator with default settings (its concurrency follows the server's
   vLLM metrics) on `--pairs` other synthetic pairs, the same model as model and
   judge.
5. Prints the evaluator's output tokens/s and requests/s as shares of the
   benchmark's, and writes every figure to OUT/gpu-check.json. The server is
   stopped on every path (SIGTERM to its process group, SIGKILL after 30 s).

Read the share with its caveats: the benchmark's random prompts share no prefix
while every evaluator prompt starts with the same system prompt or rubric (prefix
caching helps the evaluator), the evaluator's verdicts are JSON-schema constrained
(which costs some speed), and its answers have the lengths the model chooses, not
exactly the mean. A share near or above 1 says the evaluator keeps the GPU as busy
as vLLM's own load generator; well under 1 says it leaves the GPU idle.

Exit status: 0 when both runs finished, 1 when one of them failed (the logs are in OUT).
`VLLM` (environment) names the vllm executable (default: `vllm` on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python deploy/gpu_check.py",
        description="The evaluator's throughput with default settings as a share of "
        "`vllm bench serve` on the same server.",
    )
    p.add_argument("model", help="what vllm serve loads (hub id or path); also its served name")
    p.add_argument("--gpus", default="0", help="CUDA_VISIBLE_DEVICES for the server (0)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--pairs", type=int, default=500, help="pairs in the evaluator's run (500)")
    p.add_argument("--pilot-pairs", type=int, default=20, help="pairs measuring its shape (20)")
    p.add_argument("--input-len", type=int, help="benchmark prompt tokens (default: measured)")
    p.add_argument("--output-len", type=int, help="benchmark output tokens (default: measured)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="output folder")
    p.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds for the server")
    p.epilog = "Arguments after -- go to `vllm serve` as they are."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # split here: argparse would take them for this script's own
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = p.parse_args(argv)
    args.vllm_args = extra
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen:
    vllm = shlex.split(os.environ.get("VLLM", "vllm"))
    cmd = [
        *vllm, "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", args.model, "--enable-prefix-caching", *args.vllm_args,
    ]  # fmt: skip
    print("starting:", shlex.join(cmd), flush=True)
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**_env(), "CUDA_VISIBLE_DEVICES": args.gpus},
            start_new_session=True,  # its own process group: stopped with its workers
        )
    finally:
        log.close()


def stop_server(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_ready(proc: subprocess.Popen, root: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(root + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"vllm serve not ready after {timeout_s:g}s; see {log_path}")
        time.sleep(2)


def write_pairs(path: Path, n: int, start: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from workers.simulated.data import write_synthetic_dataset

    return write_synthetic_dataset(path, n, start=start)


def run_evaluator(args: argparse.Namespace, data: Path, url: str, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "evaluator", "run", "--data", str(data),
        "--model", args.model, "--judge-model", args.model, "--base-url", url,
        "--out", str(out), "--progress", "log",
        # A throughput check, not the paper's protocol: our rubric needs no download (GPU
        # nodes are often offline) and has the same request shape.
        "--judge-prompt", "builtin",
    ]  # fmt: skip
    print("running:", shlex.join(cmd), flush=True)
    code = subprocess.run(cmd, env=_env(), check=False).returncode
    if code not in (0, 6):
        raise SystemExit(f"the evaluator exited with {code}; see {out}")
    summary = json.loads((out / "summary.json").read_text())
    session = summary["last_session"]
    calls = max(1, session["calls_sent"])
    return {
        "exit_code": code,
        "wall_s": session["wall_s"],
        "calls": session["calls_sent"],
        "requests_per_s": session["calls_sent"] / session["wall_s"],
        "output_tokens_per_s": session["tokens_out"] / session["wall_s"],
        "mean_prompt_tokens": session["tokens_in"] / calls,
        "mean_output_tokens": session["tokens_out"] / calls,
        "failed_pairs": summary.get("n_failed", 0),
        "follows_server": [
            e.get("follows_server") for stage in session["endpoints"].values() for e in stage
        ],
    }


def run_bench(args: argparse.Namespace, root: str, input_len: int, output_len: int) -> dict:
    vllm = shlex.split(os.environ.get("VLLM", "vllm"))
    cmd = [
        *vllm, "bench", "serve", "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions", "--base-url", root, "--model", args.model,
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--ignore-eos", "--request-rate", "inf",
        "--num-prompts", str(3 * args.pairs), "--save-result",
        "--result-dir", str(args.out), "--result-filename", "vllm-bench.json",
    ]  # fmt: skip
    print("running:", shlex.join(cmd), flush=True)
    code = subprocess.run(cmd, env=_env(), check=False).returncode
    if code != 0:
        raise SystemExit(f"vllm bench serve exited with {code}")
    result = json.loads((args.out / "vllm-bench.json").read_text())
    return {
        key: result.get(key)
        for key in (
            "duration",
            "completed",
            "failed",
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
        )
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    port = args.port or _free_port()
    root = f"http://127.0.0.1:{port}"
    log_path = args.out / "vllm-serve.log"
    server = start_server(args, port, log_path)
    # SIGTERM (a job scheduler) ends the run the way Ctrl-C does: the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        wait_ready(server, root, args.ready_timeout, log_path)
        input_len, output_len = args.input_len, args.output_len
        pilot = None
        if input_len is None or output_len is None:
            data = write_pairs(args.out / "pilot.jsonl", args.pilot_pairs, start=1)
            pilot = run_evaluator(args, data, root + "/v1", args.out / "pilot")
            input_len = input_len or max(1, round(pilot["mean_prompt_tokens"]))
            output_len = output_len or max(1, round(pilot["mean_output_tokens"]))
        bench = run_bench(args, root, input_len, output_len)
        # Other pairs than the pilot's: none of these prompts is in the prefix cache yet.
        data = write_pairs(args.out / "pairs.jsonl", args.pairs, start=args.pilot_pairs + 1)
        evaluator = run_evaluator(args, data, root + "/v1", args.out / "eval")
    finally:
        stop_server(server)
    share_tokens = evaluator["output_tokens_per_s"] / (bench["output_throughput"] or float("nan"))
    share_requests = evaluator["requests_per_s"] / (bench["request_throughput"] or float("nan"))
    report = {
        "model": args.model,
        "gpus": args.gpus,
        "request_shape": {"input_len": input_len, "output_len": output_len},
        "pilot": pilot,
        "vllm_bench_serve": bench,
        "evaluator_default_settings": evaluator,
        "share_output_tokens_per_s": share_tokens,
        "share_requests_per_s": share_requests,
    }
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"vllm bench serve: {bench['output_throughput']:,.0f} output tokens/s, "
        f"{bench['request_throughput']:.2f} requests/s ({input_len} in / {output_len} out)\n"
        f"evaluator (default settings): {evaluator['output_tokens_per_s']:,.0f} output tokens/s, "
        f"{evaluator['requests_per_s']:.2f} requests/s "
        f"(concurrency followed the server: {all(evaluator['follows_server'])})\n"
        f"share of vllm bench serve: {share_tokens:.0%} of its output tokens/s, "
        f"{share_requests:.0%} of its requests/s (figures in {args.out / 'gpu-check.json'})",
        flush=True,
    )
    return 0 if evaluator["exit_code"] == 0 and not bench.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
