"""Streaming readers, one per format (JSONL, CSV, Parquet, the hub): (location, raw row)
pairs, a row at a time (Parquet one row group batch at a time), so memory does not grow
with the file. A line too long or not parseable is a bad row; a source that is not a
dataset at all is one DatasetError."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from evaluator.dataset.schema import (
    ANSWER_COLUMNS,
    MAX_LINE_BYTES,
    SAMPLE,
    BadRow,
    DatasetError,
    sample_path,
)
from evaluator.dataset.validation import resolve_columns

DATASET_MARKERS = ("for_question", "against_question", "issue_description")


def _looks_like_dataset(row: dict[str, Any], source: str, markers: tuple[str, ...]) -> None:
    if not any(c in row for c in markers):
        raise DatasetError(
            f"{source} is not the expected kind of file: its first row has none of the columns "
            f"{', '.join(markers)} (found: {', '.join(map(str, list(row)[:8])) or 'none'})"
        )


def bounded_lines(fh: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file; None for a line longer than `limit` bytes, which is read
    through in blocks and never held whole."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n") and len(line) == limit + 1:
            yield line
            continue
        while line and not line.endswith(b"\n"):  # skip the rest of the long line
            line = fh.readline(1 << 20)
        yield None


def _too_long(where: str) -> BadRow:
    return BadRow(where, f"line longer than {MAX_LINE_BYTES >> 20} MiB (the limit for one row)")


def jsonl_rows(
    path: Path, markers: tuple[str, ...] = DATASET_MARKERS
) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    first = True
    with path.open("rb") as fh:
        for lineno, line in enumerate(bounded_lines(fh), 1):
            where = f"line {lineno}"
            if line is None:
                yield where, _too_long(where)
                continue
            if not line.strip():
                continue
            try:
                line.decode("utf-8")
                obj = orjson.loads(line)
            except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
                if first:
                    raise DatasetError(
                        f"{path} is not a JSONL dataset: line {lineno} is not JSON ({exc})"
                    ) from None
                kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
                yield where, BadRow(where, f"{kind} (truncated or corrupted line?)")
                continue
            if not isinstance(obj, dict):
                if first:
                    raise DatasetError(
                        f"{path} is not a JSONL dataset: line {lineno} is not an object"
                    )
                yield where, BadRow(where, "not a JSON object")
                continue
            if first:
                _looks_like_dataset(obj, str(path), markers)
                first = False
            yield where, obj


_TOO_LONG = "\ufffe valbench: line too long \ufffe"  # stands in for a skipped CSV line


def _csv_lines(fh: BinaryIO) -> Iterator[str]:
    for line in bounded_lines(fh):
        yield f"{_TOO_LONG}\n" if line is None else line.decode("utf-8")


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    # section_text can be tens of thousands of characters; a field longer than a line may
    # be is malformed (and must not grow without bound over many lines).
    csv.field_size_limit(MAX_LINE_BYTES)
    try:
        fh = path.open("rb")
        reader = csv.DictReader(_csv_lines(fh))
        header = reader.fieldnames or []
    except UnicodeDecodeError:
        fh.close()
        raise DatasetError(f"{path} is not a UTF-8 CSV file") from None
    with fh:
        _looks_like_dataset(dict.fromkeys(header), str(path), DATASET_MARKERS)
        resolve_columns(header, str(path))  # a wrong header is one error, not one per row
        rowno = 1
        while True:
            rowno += 1
            where = f"row {rowno}"
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise DatasetError(
                    f"{path}: not UTF-8 near {where}; no rows after it were read"
                ) from None
            except csv.Error as exc:
                raise DatasetError(f"{path}: malformed CSV near {where}: {exc}") from None
            if any(isinstance(v, str) and _TOO_LONG in v for v in row.values()):
                yield where, _too_long(where)
                continue
            if None in row or any(v is None for v in row.values()):
                yield where, BadRow(where, "wrong number of fields (truncated row?)")
                continue
            yield where, row


def parquet_rows(
    path: Path | io.IOBase, name: str, markers: tuple[str, ...] = DATASET_MARKERS
) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            f"reading {name} needs pyarrow: pip install 'valbench-evaluator[hf]'"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"{name} is not a readable Parquet file: {exc}") from None
    _looks_like_dataset(dict.fromkeys(pf.schema_arrow.names), name, markers)
    rowno = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            rowno += 1
            yield f"row {rowno}", row


def _hub_rows(repo: str, split: str) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    """Stream a hub dataset's Parquet files for one split (the `hf` extra; network or the cache).

    Every file is in the cache before the first row is read, so a run never stalls on the
    network mid-way (the start-up check reads the first row). See evaluator.hub.
    """
    from evaluator.hub import HubError, snapshot

    try:
        local = snapshot(repo, split)
    except HubError as exc:
        raise DatasetError(str(exc)) from None
    for name, path in local:
        yield from parquet_rows(path, f"hf:{repo}/{name}")


def raw_rows(source: str, split: str = "test") -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    """(location, row) for every row of a source: a path, `sample`, or `hf:owner/name`."""
    if source.startswith("hf:"):
        return _hub_rows(source[3:], split)
    path = sample_path() if source == SAMPLE else Path(source)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return jsonl_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix in (".parquet", ".pq"):
        return parquet_rows(path, str(path))
    raise DatasetError(f"{path}: unknown dataset format {suffix!r} (use .jsonl, .csv or .parquet)")


def has_answer_columns(source: str, split: str = "test") -> bool:
    """Whether the source's first row holds both answer columns (a responses dataset)."""
    for _where, row in raw_rows(source, split):
        if isinstance(row, dict):
            return all(c in row for c in ANSWER_COLUMNS)
    return False


def count_rows(source: str, split: str = "test") -> int | None:
    """Rows in a local source, cheaply and without validating (for progress and ETA).

    Bad rows are counted too, so it is an upper bound on the pairs; None for hub
    sources and files that cannot be counted.
    """
    if source.startswith("hf:"):
        return None
    path = sample_path() if source == SAMPLE else Path(source)
    try:
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        n = 0
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                n += block.count(b"\n")
        return max(0, n - 1) if suffix == ".csv" else n  # CSV: header; embedded newlines overcount
    except Exception:  # progress is a convenience: never fail a run for it
        return None
