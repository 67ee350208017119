"""results.parquet: the rows of results.jsonl in the reference pipeline's columns (spec §6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from evaluator import reference_outputs

PARQUET = "results.parquet"


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
        fields += [
            ("provider_refusals", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
        ]
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


def write_parquet_from_jsonl(run_dir: Path, orders: tuple[str, ...]) -> None:
    """results.parquet from a finished results.jsonl (when the side process could not)."""
    sink = ParquetSink(run_dir / (PARQUET + ".tmp"), orders)
    with (run_dir / "results.jsonl").open("rb") as fh:
        for line in fh:
            sink.add(orjson.loads(line))
    sink.close(run_dir / PARQUET)
