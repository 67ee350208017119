"""A run's outputs: results.jsonl, summary.json, the CSVs and report.md.

Results are assembled by streaming the dataset again and joining each pair
with its calls in the store, so nothing per pair is held in memory except the
few numbers scoring needs.
"""

from __future__ import annotations

import base64
import csv
import html
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from evaluator import pair_answers, reference_outputs, report_share
from evaluator.calls import CallBuilder
from evaluator.config import RunConfig
from evaluator.costs import CostMeter, expected_calls
from evaluator.dataset import (
    SAMPLE,
    DatasetError,
    Pair,
    _as_int,
    describe_source,
    jsonl_rows,
    parquet_rows,
)
from evaluator.fingerprint import Fingerprint
from evaluator.identity import identity
from evaluator.protocol import VerdictError, parse_verdict
from evaluator.report_child import ReportChild
from evaluator.scoring import METRIC_KEYS, Observation, PairScorer, Scorer, adjusted_score
from evaluator.sharding import run_pairs
from evaluator.store import CallRecord, FailureGroups, Store

SIMULATION_BANNER = (
    "SIMULATION: answers and verdicts come from the project's simulated backend, "
    "not from a language model. These numbers say nothing about any real model."
)
SAMPLE_BANNER = (
    "SAMPLE: the bundled sample of our own pairs in the VAL-Bench schema, "
    "not the VAL-Bench dataset."
)


def _verdict_or_error(raw: Any) -> tuple[Any, str | None]:
    try:
        return parse_verdict(raw), None
    except VerdictError as exc:
        return None, str(exc)


class ParquetSink:
    """results.parquet, written in row groups as results.jsonl is (constant memory).

    Columns and types are the reference pipeline's (spec §6), so `datasets` and its
    analysis step read it: the dataset's columns; `for_response` / `against_response` and
    `alignment_judge_response` as `{content, role}` records (evaluator.reference_outputs);
    `for_response_reasoning` / `against_response_reasoning` (text) and
    `for_response_citations` / `against_response_citations` (lists of `{url, title, text}`).
    Our own columns follow: the judge's text as received (`alignment_judge_raw`), the
    parsed verdict as JSON text, the adjusted score, why a verdict is invalid, provider
    refusals, the pair's status and errors. A second judge order adds `_reverse` columns.
    """

    BATCH = 2000

    def __init__(self, path: Path, orders: tuple[str, ...]) -> None:
        import pyarrow as pa

        self.pa = pa
        self.path = path
        message = pa.struct([("content", pa.string()), ("role", pa.string())])
        citations = pa.list_(
            pa.struct([("url", pa.string()), ("title", pa.string()), ("text", pa.string())])
        )
        fields = [
            ("id", pa.int64()),
            ("article_title", pa.string()),
            ("url", pa.string()),
            ("section_title", pa.string()),
            ("section_text", pa.string()),
            ("issue_description", pa.string()),
            ("for_question", pa.string()),
            ("against_question", pa.string()),
            ("issue_scale", pa.int64()),
            ("category", pa.string()),
            ("for_response", message),
            ("against_response", message),
            ("for_response_reasoning", pa.string()),
            ("against_response_reasoning", pa.string()),
            ("for_response_citations", citations),
            ("against_response_citations", citations),
        ]
        self.suffixes = ["" if order == orders[0] else f"_{order}" for order in orders]
        for suffix in self.suffixes:
            fields += [
                (f"alignment_judge_response{suffix}", message),
                (f"alignment_judge_raw{suffix}", pa.string()),
                (f"verdict{suffix}", pa.string()),
                (f"adjusted_score{suffix}", pa.int64()),
                (f"verdict_error{suffix}", pa.string()),
            ]
        fields += [("provider_refusals", pa.string()), ("status", pa.string()), ("error", pa.string())]
        self.schema = pa.schema(fields)
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._count = 0
        self._writer = None

    def _convert(self, row: dict[str, Any]) -> dict[str, Any]:
        """A results.jsonl row in the parquet's columns and types."""
        out = dict(row)
        for side in ("for", "against"):
            out[f"{side}_response"] = reference_outputs.record(row.get(f"{side}_response"))
            out[f"{side}_response_reasoning"] = row.get(f"{side}_reasoning")
            cited = row.get(f"{side}_citations")
            out[f"{side}_response_citations"] = (
                [
                    {
                        "url": c.get("url"),
                        "title": c.get("title"),
                        "text": c.get("text", c.get("cited_text")),
                    }
                    for c in cited
                    if isinstance(c, dict)
                ]
                if cited
                else None
            )
        for suffix in self.suffixes:
            raw = row.get(f"alignment_judge_response{suffix}")
            verdict = row.get(f"verdict{suffix}")
            out[f"alignment_judge_raw{suffix}"] = raw
            out[f"alignment_judge_response{suffix}"] = reference_outputs.judge_record(raw, verdict)
            out[f"verdict{suffix}"] = None if verdict is None else orjson.dumps(verdict).decode()
        refusals = row.get("provider_refusals")
        out["provider_refusals"] = orjson.dumps(refusals).decode() if refusals else None
        return out

    def add(self, row: dict[str, Any]) -> None:
        converted = self._convert(row)
        for name, column in self._columns.items():
            column.append(converted.get(name))
        self._count += 1
        if self._count >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        table = self.pa.Table.from_pydict(self._columns, schema=self.schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        self._writer.write_table(table)
        for column in self._columns.values():
            column.clear()
        self._count = 0

    def close(self, final: Path) -> None:
        if self._count or self._writer is None:
            self._flush()
        self._writer.close()
        self.path.replace(final)


class _Tally:
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
                rec = self.seen("judge", records.get(self._calls.judge_call(pair, order, *shown).key))
                row[f"alignment_judge_response{suffix}"] = rec.content if rec else None
                if rec is None:
                    status = "pending" if status == "scored" else status
                    continue
                if rec.status == "failed":
                    errors.append(f"{rec.role}: {rec.error_class}: {rec.error}")
                    status = "failed"
                    continue
                verdict, err = _verdict_or_error(rec.content)
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
            files.update(
                reference_outputs.tables(scorer.overall, scorer.by_named_category, suffix)
            )
        return files


class PairStatus:
    """A pair's status as the report counts it (scored, invalid, failed or pending)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._tally = _Tally(config.judge_orders)

    def __call__(self, pair: Pair, records: dict[str, CallRecord]) -> str:
        return self._tally.pair_row(self.config, pair, records)["status"]


class PairRows:
    """A pair's results.jsonl row from its calls, as the report writes it (the viewer
    shows pairs this way while a run is still going)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._tally = _Tally(config.judge_orders)

    def __call__(self, pair: Pair, records: dict[str, CallRecord]) -> dict[str, Any]:
        return self._tally.pair_row(self.config, pair, records)


class ReportInterrupted(Exception):
    """A signal arrived while the outputs were being written: they stopped after one file."""


def _stop_point(should_stop: Callable[[], bool] | None, written: str) -> None:
    if should_stop is not None and should_stop():
        raise ReportInterrupted(f"interrupted while writing the outputs (finished {written})")


RESULTS_TMP = "results.jsonl.tmp"
FINISHED_META = "finished_config"  # the config whose outputs left no pair to do
MAX_FAILURE_GROUPS = 50  # in summary.json; the report and the terminal show the first few
SHOWN_FAILURE_GROUPS = 5
BY_ISSUE_SCALE_CSV = "metrics_by_issue_scale.csv"
BY_CATEGORY_CSV = "metrics_by_category.csv"


def build_run_outputs(
    run_dir: Path,
    config: RunConfig,
    store: Store,
    side: ReportChild | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    pairs: Iterable[Pair] | None = None,
    pairs_complete: bool = True,
) -> dict[str, Any]:
    """Write every output file of a run from its store; return summary.json's content.

    `side`: the report's side process, when the caller started it early (see
    evaluator.report_child); otherwise one is started here. Closed here in any case.
    `should_stop`: asked after each file; true stops the report (ReportInterrupted).
    `pairs`: the run's pairs when they are not read from the dataset (the checkpoint's,
    evaluator.fingerprint.stored_pairs); `pairs_complete`: whether they are all of them.
    """
    if side is None:
        side = ReportChild(run_dir, run_dir / RESULTS_TMP, config.judge_orders)
    try:
        tmp = run_dir / RESULTS_TMP
        # A few pairs with their answers, for report.html.
        picker = report_share.SharePicker(config.judge_orders)
        with tmp.open("wb") as out:
            side.rows_ready()
            summary = _build_run_outputs(
                run_dir, config, store, out, tmp, pairs, pairs_complete, picker
            )
        _stop_point(should_stop, "results.jsonl")
        write_summary_files(run_dir, summary, side, should_stop, share=picker.picked())
        if summary["all_pairs_have_verdicts"] and store.writable:  # a resume has nothing to send
            store.set_meta(FINISHED_META, store.get_meta("config"))
        return summary
    finally:
        side.close()


def _build_run_outputs(
    run_dir: Path,
    config: RunConfig,
    store: Store,
    out: BinaryIO,
    tmp: Path,
    pairs: Iterable[Pair] | None = None,
    pairs_complete: bool = True,
    picker: report_share.SharePicker | None = None,
) -> dict[str, Any]:
    """results.jsonl (written through `out`, then renamed) and the summary."""
    tally = _Tally(config.judge_orders)
    content = Fingerprint()
    n_pairs = 0
    for pair in run_pairs(config) if pairs is None else pairs:
        n_pairs += 1
        content.add(pair)
        row = tally.pair_row(config, pair, store.calls_for_pair(pair.id))
        out.write(orjson.dumps(row))
        out.write(b"\n")
        if picker is not None:
            picker.add(row)
    out.flush()
    tmp.replace(run_dir / "results.jsonl")

    orders = config.judge_orders
    summary: dict[str, Any] = {
        "simulated": config.simulated,
        "dataset": describe_source(config.data),
        "sample": config.data == SAMPLE,
        "model": config.model,
        "judge_model": config.judge_model,
        "judge_order": config.judge_order,
        **identity(config),
        "judge_only": config.judge_only,
        "limit": config.limit,
        "shard": config.shard,
        # The rows of the pairs the outputs cover, as one hash (evaluator.fingerprint).
        "dataset_fingerprint": content.hexdigest(),
        "pairs_from": "dataset" if pairs is None else "checkpoint",
        "complete": tally.statuses["pending"] == 0 and pairs_complete,
        # The one field a script needs: every pair has a verdict (valid, or invalid after
        # the judge's re-asks); false when any pair failed or has no outcome yet.
        "all_pairs_have_verdicts": tally.statuses["pending"] == 0
        and tally.statuses["failed"] == 0
        and pairs_complete,
        "n_pairs": n_pairs,
        "n_failed": tally.statuses["failed"],
        "n_pending": tally.statuses["pending"],
        "n_bad_rows": len(store.bad_rows()),
        "n_truncated_answers": tally.truncated,
        "n_provider_refusals": tally.provider_refusals,
        "possibly_duplicated_calls": store.possibly_duplicated(),
        "failures_by_class": tally.failures,
        # Failed calls grouped by stage, class, HTTP status and message, largest first.
        "failures": [g.to_dict() for g in tally.failure_groups.top(MAX_FAILURE_GROUPS)],
        "usage": tally.usage,
        "cost": CostMeter.for_run(config, store.iter_usage()).summary(
            expected_calls(n_pairs, len(orders))
        ),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last_session": store.get_meta("last_session"),
    }
    merged = store.get_meta("merged_from")
    if merged:
        summary["merged_from"] = merged
    summary.update(tally.pooled.summary())
    if len(orders) > 1:
        summary["by_judge_order"] = {o: tally.scorers[o].summary() for o in orders}
    summary["reference_files"] = tally.reference_files()
    return summary


# -- `score FILE`: metrics from an existing verdict file ---------------------
SCORE_MARKERS = ("alignment_judge_response",)


def _verdict_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"verdict file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return jsonl_rows(path, SCORE_MARKERS)
    if suffix in (".parquet", ".pq"):
        return parquet_rows(path, str(path), SCORE_MARKERS)
    raise DatasetError(f"{path}: unknown verdict file format {suffix!r} (use .jsonl or .parquet)")


def score_file(path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a verdict file (id, category, issue_scale, alignment_judge_response)."""
    scorer = Scorer()
    rows = 0
    unreadable: list[str] = []
    reasons: dict[str, int] = {}
    for _where, row in _verdict_rows(path):
        if not isinstance(row, dict):  # a line that is not JSON at all: no pair to count
            unreadable.append(str(row))
            continue
        verdict, err = _verdict_or_error(row.get("alignment_judge_response"))
        if err:
            reasons[err.split(" (")[0]] = reasons.get(err.split(" (")[0], 0) + 1
        category = row.get("category")
        category = category if isinstance(category, str) and category else None
        pair_id = _as_int(row.get("id"))
        rows += 1
        scorer.add(
            Observation(
                pair_id if pair_id is not None else -1,
                category,
                _as_int(row.get("issue_scale")),
                verdict,
            )
        )
    if not rows:
        raise DatasetError(f"{path} holds no verdict rows")
    summary: dict[str, Any] = {
        "source": str(path),
        "unreadable_rows": unreadable,
        "invalid_reasons": reasons,
    }
    summary.update(scorer.summary())
    summary["reference_files"] = reference_outputs.tables(scorer.overall, scorer.by_named_category)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary_files(out_dir, summary)
    return summary


# -- files ------------------------------------------------------------------
def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def render_html(markdown: str, out_dir: Path, extra: str = "") -> str:
    """A self-contained page from our own report.md (its few constructs only), images inlined;
    `extra`: HTML of our own appended at the end (report_share's pairs)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if table:
            head, *rows = table
            body.append(
                "<table><thead><tr>"
                + "".join(f"<th>{_inline(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
            )
            body.extend(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            body.append("</tbody></table>")
            table.clear()

    in_list = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("> "):
            body.append(f'<p class="banner">{_inline(line[2:])}</p>')
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif m := re.match(r"!\[(.*?)\]\((.*?)\)", line):
            data = base64.b64encode((out_dir / m.group(2)).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(m.group(1))}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline(m.group(1))}'
                "</figcaption></figure>"
            )
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child"
        "{text-align:left}.banner{background:#fff3f0;border-left:4px solid #b03030;padding:.5em}"
        "img{max-width:100%}figure{margin:1em 0}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>VAL-Bench report</title><style>{style}</style></head><body>"
        + "\n".join(body)
        + extra
        + "</body></html>\n"
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_csv(
    path: Path, key_name: str, groups: dict[str, dict[str, Any]], overall: dict[str, Any]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([key_name, "n", *METRIC_KEYS])
        w.writerow(["all", overall["n_valid"], *(overall[k] for k in METRIC_KEYS)])
        for name, m in groups.items():
            w.writerow([name, m["n"], *(m[k] for k in METRIC_KEYS)])


def write_summary_files(
    out_dir: Path,
    summary: dict[str, Any],
    side: ReportChild | None = None,
    should_stop: Callable[[], bool] | None = None,
    share: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """summary.json, the CSVs, the plots, report.md and report.html. With `side`, the
    plots (and results.parquet) come from the report's side process; with `share`, pairs
    worth reading (report_share) end report.html. `should_stop` is asked after each file
    (ReportInterrupted)."""
    (out_dir / "summary.json").write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    _stop_point(should_stop, "summary.json")
    # Ours: every metric and interval, overall and per group. The reference's layouts
    # (alignment_statistics.csv, category_metrics.csv) come from reference_outputs.
    _write_csv(out_dir / BY_ISSUE_SCALE_CSV, "issue_scale", summary["by_issue_scale"], summary)
    _write_csv(out_dir / BY_CATEGORY_CSV, "category", summary["by_category"], summary)
    reference_outputs.write(out_dir, summary.get("reference_files") or {})
    _stop_point(should_stop, "the CSV files")
    if side is None:
        from evaluator.plots import write_plots  # matplotlib costs ~0.5 s to import: only here

        images = write_plots(out_dir, summary)
    else:
        images = side.finish(summary)
    _stop_point(should_stop, "the plots and results.parquet")
    markdown = render_markdown(summary, images)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    _stop_point(should_stop, "report.md")
    extra = report_share.render(share) if share else ""
    (out_dir / "report.html").write_text(render_html(markdown, out_dir, extra), encoding="utf-8")


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.4f}"


def _cost_lines(cost: dict[str, Any]) -> list[str]:
    """Tokens and estimated cost per stage (prices: the price table or the --price flags)."""
    lines = [
        "| stage | calls | input tokens | output tokens | estimated cost | price (USD/M in, out) |",
        "|---|---|---|---|---|---|",
    ]
    for stage, label in (("gen", "generation"), ("judge", "judge")):
        c = cost.get(stage) or {}
        price = c.get("price")
        price_text = f"{price['input']:g}, {price['output']:g}" if price else "unknown"
        usd = _usd(c.get("usd")) if price else "unknown"
        lines.append(
            f"| {label} | {c.get('calls', 0)} | {c.get('tokens_in', 0)} | "
            f"{c.get('tokens_out', 0)} | {usd} | {price_text} |"
        )
    total = f"- Estimated cost: {_usd(cost.get('total_usd'))}"
    if cost.get("projected_total_usd") is not None:
        total += f", projected for the whole run {_usd(cost['projected_total_usd'])}"
    if cost.get("max_cost_usd") is not None:
        total += f", budget (--max-cost) ${cost['max_cost_usd']:g}"
    return [*lines, "", total, ""]


def failure_lines(failures: list[dict[str, Any]]) -> list[str]:
    """The top failure messages with their counts (summary.json `failures` has them all)."""
    shown = failures[:SHOWN_FAILURE_GROUPS]
    lines = [
        "## Failures",
        "",
        "| calls | stage | class | HTTP | message (first of its kind) | e.g. pair |",
        "|---|---|---|---|---|---|",
    ]
    for f in shown:
        message = str(f["message"]).replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {f['count']} | {f['stage']} | {f['class']} | {f['http_status'] or ''} | "
            f"{message} | {f['example_pair_id']} |"
        )
    if len(failures) > len(shown):
        lines.append("")
        lines.append(f"{len(failures) - len(shown)} more kinds of failure in summary.json.")
    lines += [
        "",
        "Fix the cause, then send the failed calls again with "
        "`python -m evaluator --resume --out DIR --retry-failed`.",
        "",
    ]
    return lines


def render_markdown(s: dict[str, Any], images: dict[str, str] | None = None) -> str:
    lines = ["# VAL-Bench report", ""]
    if s.get("simulated"):
        lines += [f"> **{SIMULATION_BANNER}**", ""]
    if s.get("sample"):
        lines += [f"> **{SAMPLE_BANNER}**", ""]
    if s.get("complete") is False:
        lines += [
            f"> **INCOMPLETE RUN: {s['n_pending']} pairs not finished. Resume it with "
            "`python -m evaluator --resume --out DIR`.**",
            "",
        ]
    for key, label in (
        ("dataset", "Dataset"),
        ("source", "Verdict file"),
        ("model", "Model"),
        ("judge_model", "Judge"),
        ("judge_order", "Judge order"),
        ("limit", "Limit (first valid pairs)"),
    ):
        if s.get(key) is not None:
            lines.append(f"- {label}: `{s[key]}`")
    if s.get("judge_prompt_sha256"):
        lines.append(
            f"- Judge prompt: {s['judge_prompt_source']} ({s['judge_prompt_origin']}), "
            f"sha256 `{s['judge_prompt_sha256']}`"
            + ("" if s["judge_prompt_source"] == "paper" else " (not the paper's prompt)")
        )
        lines.append(
            f"- Generation system prompt: {s['system_prompt_source']}, "
            f"sha256 `{s['system_prompt_sha256']}`"
        )
    if s.get("judge_only"):
        lines.append(
            "- Answers: from the dataset (a judge-only run: no generation call was made)"
        )
    if s.get("shard"):
        lines.append(
            f"- Shard: `{s['shard']}` (only the pairs whose id hashes to this shard; "
            "merge all shards with `python -m evaluator merge`)"
        )
    if s.get("merged_from"):
        shards = s["merged_from"]
        lines.append(
            f"- Merged from {len(shards)} shards: "
            + ", ".join(f"`{m['shard']}` {m['dir']}" for m in shards)
        )
    if s.get("unit") == "pair":  # both judge orders: the top-level counts are pairs
        counts = [
            f"pairs with a valid verdict {s['n_valid']}",
            f"pairs without one {s['n_invalid']}",
        ]
    else:
        counts = [f"valid verdicts {s['n_valid']}", f"invalid verdicts {s['n_invalid']}"]
    if "n_failed" in s:
        counts += [
            f"failed pairs {s['n_failed']}",
            f"bad input rows {s['n_bad_rows']}",
            f"answers cut at max tokens {s['n_truncated_answers']}",
            f"answers withheld by the provider (counted as refusals) "
            f"{s.get('n_provider_refusals', 0)}",
            f"calls possibly paid twice {s['possibly_duplicated_calls']}",
        ]
        if s.get("failures_by_class"):
            failed = ", ".join(f"{k} {v}" for k, v in sorted(s["failures_by_class"].items()))
            counts.append(f"failed calls by class: {failed}")
    lines += [f"- Counts: {', '.join(counts)}", ""]
    if s.get("failures"):
        lines += failure_lines(s["failures"])
    if s.get("cost"):
        lines += _cost_lines(s["cost"])
    ci = s["ci95"]
    lines += ["| metric | value (%) | 95% bootstrap interval |", "|---|---|---|"]
    names = {
        "pac": "PAC (pairwise alignment consistency)",
        "ref": "REF (response refusal)",
        "ref1": "REF1 (exactly one refuses)",
        "ref2": "REF2 (both refuse)",
        "ref_issue": "Issue-level refusal",
        "ninf": "NINF (response no-information)",
        "ninf1": "NINF1 (exactly one)",
        "ninf2": "NINF2 (both)",
        "ninf_issue": "Issue-level no-information",
    }
    for k in METRIC_KEYS:
        interval = ci.get(k)
        ci_text = f"{interval[0]:.2f} – {interval[1]:.2f}" if interval else ""
        lines.append(f"| {names[k]} | {_fmt(s[k])} | {ci_text} |")
    if "by_judge_order" in s:
        lines += [
            "",
            "Top-level figures pool both judge orders with the pair as the unit: a pair counts "
            "once, with the mean of its valid verdicts, and the intervals resample pairs.",
            "",
            "| judge order | n | PAC | REF | NINF |",
            "|---|---|---|---|---|",
        ]
        for order, m in s["by_judge_order"].items():
            lines.append(
                f"| {order} | {m['n_valid']} | {_fmt(m['pac'])} | {_fmt(m['ref'])} | {_fmt(m['ninf'])} |"
            )
    for title, key in (
        ("By issue awareness (issue_scale)", "by_issue_scale"),
        ("By category", "by_category"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| group | n | PAC | issue-level refusal | issue-level no-information |",
            "|---|---|---|---|---|",
        ]
        for name, m in s[key].items():
            lines.append(
                f"| {name} | {m['n']} | {_fmt(m['pac'])} | {_fmt(m['ref_issue'])} | {_fmt(m['ninf_issue'])} |"
            )
    images = images or {}
    captions = {
        "score_distribution": "Score distribution",
        "pac_by_issue_scale": "PAC by issue awareness",
        "by_category": "PAC, refusal and no-information by category",
    }
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{captions[name]}]({path})" for name, path in images.items()]
    dist = s["score_distribution"]
    lines += [
        "",
        "## Score distribution (% of valid verdicts)",
        "",
        "| score | -2 | -1 | 0 | +1 | +2 |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("judge score", "alignment_score"), ("refusal-adjusted", "adjusted_score")):
        lines.append(
            f"| {label} | " + " | ".join(_fmt(dist[key][str(v)]) for v in (-2, -1, 0, 1, 2)) + " |"
        )
    return "\n".join(lines) + "\n"
