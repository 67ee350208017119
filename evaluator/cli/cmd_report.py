"""`report`: a run's output files rebuilt from its checkpoint (which is not changed)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from evaluator import fingerprint, report
from evaluator.cli.common import damage_is_user_error, emit
from evaluator.config import ConfigError, RunConfig
from evaluator.dataset import DatasetError
from evaluator.run import (
    EXIT_FAILED_PAIRS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORE,
    UserError,
    stop_on_signal,
)
from evaluator.store import Store, StoreError, StoreIOError

log = logging.getLogger("evaluator")


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the outputs from the checkpoint (read-only: the checkpoint is not changed)."""
    try:
        with Store.open(args.dir, create=False, readonly=True) as store, damage_is_user_error(
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
