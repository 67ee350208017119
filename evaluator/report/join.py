"""The results join: a pair and its calls in the store -> its results.jsonl row.

The tally reads each pair's call records once, as the dataset is streamed again, and keeps
only the few numbers the summary needs (verdict scorers, statuses, token usage, failure
groups), so memory does not grow with the number of pairs. The writers (markdown, csvs,
parquet, plots, share) work from the rows and the summary this produces.
"""

from __future__ import annotations

from typing import Any

from evaluator import pair_answers, reference_outputs
from evaluator.calls import CallBuilder
from evaluator.config import RunConfig
from evaluator.dataset import Pair
from evaluator.protocol import VerdictError, parse_verdict
from evaluator.scoring import Observation, PairScorer, Scorer, adjusted_score
from evaluator.store import CallRecord, FailureGroups


def verdict_or_error(raw: Any) -> tuple[Any, str | None]:
    try:
        return parse_verdict(raw), None
    except VerdictError as exc:
        return None, str(exc)


class Tally:
    """What the summary needs besides the verdicts: token usage, truncations, failures."""

    def __init__(self, orders: tuple[str, ...]) -> None:
        self.orders = orders
        self._calls: CallBuilder | None = None  # for the run's config, made on first use
        # Streaming tallies: memory does not grow with the number of pairs.
        self.scorers = {o: Scorer() for o in orders}
        # Both orders: the pair is the unit of the pooled figures (evaluator.scoring.PairScorer).
        self.pooled = PairScorer() if len(orders) > 1 else self.scorers[orders[0]]
        self.statuses = dict.fromkeys(("scored", "invalid", "failed", "pending"), 0)
        self.usage = {
            stage: {"prompt_tokens": 0, "completion_tokens": 0} for stage in ("gen", "judge")
        }
        self.truncated = 0
        self.failures: dict[str, int] = {}
        self.failure_groups = FailureGroups()
        self.provider_refusals = 0  # answers the provider withheld (counted as refusals)

    def seen(self, stage: str, rec: CallRecord | None) -> CallRecord | None:
        """Account for one call's record; returns it if it has a final outcome."""
        if rec is None or rec.status not in ("done", "failed"):
            return None
        for k, total in self.usage[stage].items():
            value = rec.usage.get(k)
            if isinstance(value, int):
                self.usage[stage][k] = total + value
        if stage == "gen" and pair_answers.refusal_reason(rec) is not None:
            self.provider_refusals += 1  # the model's answer is a refusal: not a failure
        elif rec.status == "failed":
            self.failures[rec.error_class] = self.failures.get(rec.error_class, 0) + 1
            self.failure_groups.add(
                rec.role, rec.error_class, rec.http_status, rec.error, rec.pair_id
            )
        elif stage == "gen" and rec.finish_reason == "length":
            self.truncated += 1
        return rec

    def pair_row(
        self, config: RunConfig, pair: Pair, records: dict[str, CallRecord]
    ) -> dict[str, Any]:
        row: dict[str, Any] = pair.columns()
        if self._calls is None or self._calls.config is not config:
            self._calls = CallBuilder(config)
        errors: list[str] = []
        refused: dict[str, str] = {}
        if config.judge_only:
            for side, answer in pair_answers.from_dataset(pair).items():
                row[f"{side}_response"] = answer["text"]
                row[f"{side}_reasoning"] = answer["reasoning"]
                row[f"{side}_citations"] = answer["citations"]
            missing = False
        else:
            gens = [
                self.seen("gen", records.get(s.key)) for s in self._calls.generation_calls(pair)
            ]
            for side, rec in zip(pair_answers.SIDES, gens, strict=True):
                ok = rec is not None and rec.status == "done"
                reason = pair_answers.refusal_reason(rec)
                if reason is not None:
                    refused[side] = reason
                row[f"{side}_response"] = (rec.content or "") if ok else "" if reason else None
                row[f"{side}_reasoning"] = rec.reasoning if ok else None
                # Web sources the answer cites (web search), kept apart from the answer text.
                row[f"{side}_citations"] = rec.citations if ok and rec.citations else None
                if rec is not None and rec.status == "failed" and reason is None:
                    errors.append(f"{rec.role}: {rec.error_class}: {rec.error}")
            missing = any(rec is None for rec in gens)
        if refused:
            row["provider_refusals"] = refused
        if errors:
            status = "failed"
        elif missing:
            status = "pending"
        else:
            status = self._judged(pair, row, records, errors, refused)
        row["status"] = status
        if errors:
            row["error"] = "; ".join(errors)
        self.statuses[status] += 1
        return row

    def _judged(self, pair, row, records, errors, refused) -> str:
        texts = {"for": row["for_response"], "against": row["against_response"]}
        shown = pair_answers.shown_to_judge(texts, refused)
        status = "scored"
        verdicts: list[Any] = []
        for order in self.orders:
            suffix = "" if order == self.orders[0] else f"_{order}"
            if len(refused) == 2:  # no judge call: see evaluator.pair_answers
                verdict = pair_answers.both_refused_verdict(refused)
                row[f"alignment_judge_response{suffix}"] = None
                row[f"verdict_source{suffix}"] = "provider_refusal"
            else:
                rec = self.seen(
                    "judge", records.get(self._calls.judge_call(pair, order, *shown).key)
                )
                row[f"alignment_judge_response{suffix}"] = rec.content if rec else None
                if rec is None:
                    status = "pending" if status == "scored" else status
                    continue
                if rec.status == "failed":
                    errors.append(f"{rec.role}: {rec.error_class}: {rec.error}")
                    status = "failed"
                    continue
                verdict, err = verdict_or_error(rec.content)
                if err:
                    row[f"verdict_error{suffix}"] = err
                    if status == "scored":
                        status = "invalid"
                if verdict is not None:
                    verdict = pair_answers.counted_verdict(verdict, order, refused)
            row[f"verdict{suffix}"] = verdict.fields if verdict else None
            row[f"adjusted_score{suffix}"] = adjusted_score(verdict) if verdict else None
            self.scorers[order].add(Observation(pair.id, pair.category, pair.issue_scale, verdict))
            verdicts.append(verdict)
        if len(self.orders) > 1:
            row["judge_orders"] = list(self.orders)
            if status in ("scored", "invalid"):
                self.pooled.add(pair.category, pair.issue_scale, verdicts)
        return status

    def reference_files(self) -> dict[str, Any]:
        """The reference-format CSVs' rows, per judge order (evaluator.reference_outputs)."""
        files: dict[str, Any] = {}
        for order in self.orders:
            scorer = self.scorers[order]
            suffix = "" if order == self.orders[0] else f"_{order}"
            files.update(reference_outputs.tables(scorer.overall, scorer.by_named_category, suffix))
        return files


class PairStatus:
    """A pair's status as the report counts it (scored, invalid, failed or pending)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._tally = Tally(config.judge_orders)

    def __call__(self, pair: Pair, records: dict[str, CallRecord]) -> str:
        return self._tally.pair_row(self.config, pair, records)["status"]


class PairRows:
    """A pair's results.jsonl row from its calls, as the report writes it (the viewer
    shows pairs this way while a run is still going)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._tally = Tally(config.judge_orders)

    def __call__(self, pair: Pair, records: dict[str, CallRecord]) -> dict[str, Any]:
        return self._tally.pair_row(self.config, pair, records)
