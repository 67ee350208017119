"""The command line's parser: every command's options. The `run` settings come from their
declaration (evaluator.config.settings): flags, help texts and defaults are not written here."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
from pathlib import Path
from typing import Any

from evaluator.calibrate import TOLERANCE as CALIBRATION_TOLERANCE
from evaluator.config.declare import REQUIRED, Setting
from evaluator.config.settings import FLAGS, GROUPS, JUDGE_ORDERS, SETTINGS, VARIANTS
from evaluator.dataset import SAMPLE
from evaluator.judge_prompt import DEFAULT_FOR_RUN
from evaluator.prefetch import PARTS as PREFETCH_PARTS
from evaluator.run.exits import help_table

DEFAULT_OUT = Path("runs/latest")
DEFAULT_DEMO_OUT = Path("runs/demo")
CALIBRATE_CONCURRENCY = 64  # calibrate's judge calls in flight per endpoint

EXIT_CODES = help_table()


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


def _scalar(tp: Any) -> Any:
    """int for `int | None`, float for `float`, ..."""
    args = [a for a in getattr(tp, "__args__", (tp,)) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def add_setting(
    parser: Any, setting: Setting, role: str | None, name: str, flag: str, **override: Any
) -> None:
    """One declared setting as a flag: its value lands in `name` (the field's name) and is
    None when not given, so that the file's value and then the declared default apply."""
    kwargs: dict[str, Any] = {"dest": name, "help": setting.help_for(role).replace("%", "%%")}
    tp = _scalar(setting.type)
    if tp is bool:
        kwargs.update(action="store_const", const=True)
    elif setting.many == "append":
        kwargs["action"] = "append"
    elif setting.many == "+":
        kwargs["nargs"] = "+"
    elif setting.cli_type is not None:
        kwargs["type"] = setting.cli_type
    elif tp in (int, float):
        kwargs["type"] = tp
    if setting.choices is not None:
        kwargs["choices"] = setting.choices
    if setting.metavar is not None:
        kwargs["metavar"] = setting.metavar
    kwargs.update(override)
    parser.add_argument(f"--{flag}", **kwargs)


def add_declared(parser: Any, name: str, **override: Any) -> None:
    """The flag of the declared setting `name` (`judge_rpm`), for a command other than run.
    Its argparse default is the declared one unless `override` gives another."""
    setting, role = VARIANTS[name]
    default = setting.default_for(role)
    if default is REQUIRED or override.get("required"):
        default = None
    override.setdefault("default", default)
    add_setting(parser, setting, role, name, FLAGS[name], **override)


def add_run_settings(p: argparse.ArgumentParser) -> None:
    """Every declared setting that has a flag, in its `--help` group."""
    p.add_argument(
        "--config",
        type=Path,
        help="run config file (TOML): its keys are these flags' names (with - or _), a "
        "role's also in a [model] or [judge] table without judge-; flags override it",
    )
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    for setting in SETTINGS:
        if setting.kind == "stored":
            continue
        for role, name, flag in setting.variants():
            add_setting(groups[setting.group], setting, role, name, flag)


def add_common(p: argparse.ArgumentParser, out_default: Path | None) -> None:
    """How this invocation runs (not what the run is: never stored in its config)."""
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


# Options of `add_common`: how one invocation runs; they are no run setting and have no
# TOML key (tests/test_config.py checks every other `run` flag has one).
SESSION_FLAGS = (
    "--out",
    "--resume",
    "--quiet",
    "--progress-interval",
    "--drain-timeout",
    "--progress",
    "--no-preflight",
    "--retry-failed",
    "--metrics-port",
    "--metrics-host",
)


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
    add_common(parser, None)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser(
        "run",
        help="evaluate a model on OpenAI-compatible endpoints",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(run, None)
    add_run_settings(run)
    _add_demo(sub)
    _add_reading_commands(sub)
    _add_calibrate(sub)
    _add_fetch(sub)
    return parser


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="the bundled SAMPLE through the SIMULATED backend, over loopback HTTP"
    )
    add_common(demo, DEFAULT_DEMO_OUT)
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


def _add_reading_commands(sub: Any) -> None:
    """Commands that read runs: score, status, compare, agreement, merge, report, view."""
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


def _add_calibrate(sub: Any) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="the judge on the authors' four calibration sets: expected vs measured PAC",
    )
    add_common(cal, Path("runs/calibration"))
    # The judge's settings as `run` declares them; calibrate asks for the judge by name and
    # URL, and runs its sets with more calls in flight than a run's unset default.
    add_declared(cal, "judge_model", required=True, help="judge model (the name served)")
    add_declared(cal, "judge_base_url", required=True, help="judge endpoint (repeatable)")
    add_declared(cal, "judge_api_key_env")
    add_declared(cal, "judge_provider", help="the judge endpoint's API")
    add_declared(
        cal, "judge_prompt", default=DEFAULT_FOR_RUN, help="the judge's system prompt "
        "(paper, builtin or a file; default: paper, as for run)"
    )
    cal.add_argument(
        "--data-dir",
        type=Path,
        help="local copies of the sets (calibration-unaligned-0.parquet, ...; .jsonl and .csv "
        "too); default: the hub, or its cache (see fetch)",
    )
    add_declared(cal, "limit", help="judge only the first N pairs of each set")
    add_declared(
        cal,
        "judge_concurrency",
        default=CALIBRATE_CONCURRENCY,
        help=f"judge calls in flight ({CALIBRATE_CONCURRENCY})",
    )
    add_declared(cal, "judge_rpm")
    add_declared(cal, "judge_retries")
    cal.add_argument(
        "--tolerance",
        type=_number(0, high=100),
        default=CALIBRATION_TOLERANCE,
        help=f"points of PAC a set may be off and pass ({CALIBRATION_TOLERANCE:g})",
    )


def _add_fetch(sub: Any) -> None:
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
