"""`calibrate`: the judge on the authors' four calibration sets, expected vs measured PAC."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from evaluator.cli.common import options, run_loop
from evaluator.config import ConfigError, RunConfig
from evaluator.judge_prompt import JudgePrompt, JudgePromptError
from evaluator.judge_prompt import resolve as resolve_judge_prompt
from evaluator.run import EXIT_OK, UserError, execute

log = logging.getLogger("evaluator")


def _judge_prompt(choice: str) -> JudgePrompt:
    try:
        return resolve_judge_prompt(choice)
    except JudgePromptError as exc:
        raise UserError(str(exc)) from None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from evaluator import calibrate

    chosen = _judge_prompt(args.judge_prompt)
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
                options=options(args),
            )
            if result.exit_code != EXIT_OK:
                return result.exit_code, rows
            rows.append(calibrate.verdict_row(cset, result.summary, args.tolerance))
        return EXIT_OK, rows

    code, rows = run_loop(go())
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
