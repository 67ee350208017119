"""VAL-Bench pairs: schema, validation, and streaming readers (JSONL, CSV, Parquet, the hub).

Rows are read one at a time (Parquet one row group batch at a time), so memory
does not grow with the file; the only per-row state is the set of ids seen,
needed to reject duplicates.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import orjson

SAMPLE = "sample"
STR_COLUMNS = (
    "article_title",
    "url",
    "section_title",
    "section_text",
    "issue_description",
    "for_question",
    "against_question",
)
REQUIRED_COLUMNS = ("id", *STR_COLUMNS, "issue_scale")
OPTIONAL_COLUMNS = ("category",)
NONEMPTY_COLUMNS = ("for_question", "against_question")
# Ids are stored as SQLite INTEGER and Parquet int64: a signed 64-bit integer.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1
# A JSONL or CSV line longer than this is a bad row, skipped without being held whole.
# The largest VAL-Bench row is ~150 KB (section_text up to ~42K characters); a responses
# dataset adds two answers and their reasoning. 8 MiB is ~50 times that, and bounds what
# one line can cost (parsing holds a few times its size).
MAX_LINE_BYTES = 8 << 20


class DatasetError(Exception):
    """The source as a whole cannot be used (not a dataset, unreadable, wrong columns)."""


# A responses dataset (the authors' layout, spec §6) also holds the answers: judge-only runs.
ANSWER_COLUMNS = ("for_response", "against_response")


@dataclass(frozen=True, slots=True)
class Answers:
    """The answers a dataset row already holds, with their optional reasoning and citations."""

    for_response: str
    against_response: str
    for_reasoning: str | None = None
    against_reasoning: str | None = None
    for_citations: list[Any] | None = None
    against_citations: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Pair:
    id: int
    article_title: str
    url: str
    section_title: str
    section_text: str
    issue_description: str
    for_question: str
    against_question: str
    issue_scale: int
    category: str | None
    answers: Answers | None = None  # a responses dataset's answers (judge-only runs)

    def columns(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field and costs ~100 us a row.
        return {name: getattr(self, name) for name in _PAIR_FIELDS}


# The dataset's own columns (the answers, if any, are reported by the run, not copied here).
_PAIR_FIELDS = tuple(f.name for f in fields(Pair) if f.name != "answers")


@dataclass(frozen=True, slots=True)
class BadRow:
    where: str  # "id 17" when the id is readable, else "line 5" / "row 5"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def sample_path() -> Path:
    """The bundled sample: our own pairs in the benchmark's schema, NOT the benchmark."""
    return Path(str(resources.files("evaluator") / "data" / "sample.jsonl"))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def validate_row(row: dict[str, Any], where: str) -> Pair | BadRow:
    """Check one raw row against the schema (spec §1)."""
    pair_id = _as_int(row.get("id"))
    if "id" in row and pair_id is not None:
        where = f"id {pair_id}"
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        return BadRow(where, f"missing column(s): {', '.join(missing)}")
    if pair_id is None:
        return BadRow(where, f"id must be an integer, got {row['id']!r:.40}")
    if not ID_MIN <= pair_id <= ID_MAX:
        digits = str(pair_id)
        shown = digits if len(digits) <= 24 else f"{digits[:12]}...({len(digits)} digits)"
        return BadRow(where, f"id {shown} is outside the 64-bit integer range")
    for col in STR_COLUMNS:
        if not isinstance(row[col], str):
            return BadRow(where, f"{col} must be text, got {type(row[col]).__name__}")
    for col in NONEMPTY_COLUMNS:
        if not row[col].strip():
            return BadRow(where, f"{col} is empty")
    scale = _as_int(row["issue_scale"])
    if scale is None or not 1 <= scale <= 5:
        return BadRow(where, f"issue_scale must be an integer 1-5, got {row['issue_scale']!r:.40}")
    category = row.get("category")
    if isinstance(category, float) and math.isnan(category):
        category = None  # pandas writes a missing string as NaN
    if category == "":
        category = None
    if category is not None and not isinstance(category, str):
        return BadRow(where, f"category must be text, got {type(category).__name__}")
    answers = read_answers(row, where)
    if isinstance(answers, BadRow):
        return answers
    return Pair(
        id=pair_id,
        article_title=row["article_title"],
        url=row["url"],
        section_title=row["section_title"],
        section_text=row["section_text"],
        issue_description=row["issue_description"],
        for_question=row["for_question"],
        against_question=row["against_question"],
        issue_scale=scale,
        category=category,
        answers=answers,
    )


def _answer_text(value: Any) -> str | None:
    """An answer as text: a plain string or the reference's `{content, role}` record."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_answers(row: dict[str, Any], where: str) -> Answers | BadRow | None:
    """The answers a row holds (None when it has no answer columns)."""
    present = [c for c in ANSWER_COLUMNS if c in row]
    if not present:
        return None
    if len(present) == 1:
        missing = next(c for c in ANSWER_COLUMNS if c not in present)
        return BadRow(where, f"{present[0]} is given but {missing} is missing")
    texts = {}
    for col in ANSWER_COLUMNS:
        text = _answer_text(row[col])
        if text is None:
            kind = "missing" if row[col] is None else f"of type {type(row[col]).__name__}"
            return BadRow(
                where,
                f"{col} is {kind}: an answer is text or a {{content, role}} record",
            )
        texts[col] = text
    extra: dict[str, Any] = {}
    for side in ("for", "against"):
        reasoning = row.get(f"{side}_response_reasoning")
        extra[f"{side}_reasoning"] = reasoning if isinstance(reasoning, str) and reasoning else None
        citations = row.get(f"{side}_response_citations")
        extra[f"{side}_citations"] = list(citations) if isinstance(citations, list) and citations else None
    return Answers(texts["for_response"], texts["against_response"], **extra)


def has_answer_columns(source: str, split: str = "test") -> bool:
    """Whether the source's first row holds both answer columns (a responses dataset)."""
    for _where, row in raw_rows(source, split):
        if isinstance(row, dict):
            return all(c in row for c in ANSWER_COLUMNS)
    return False


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


def resolve_columns(
    names: list[str], source: str, on_note: Callable[[str], None] | None = None
) -> dict[str, str]:
    """Check a source's columns once, before any row is used: {name in the file: schema name}.

    A required column that is missing stops everything (DatasetError naming it and the
    closest column present); an optional column spelled with other capitals (`Category`)
    is read under its schema name, with one note, never dropped silently.
    """
    present = [str(n) for n in names]
    lowered = {n.lower(): n for n in present}
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        parts = []
        for col in missing:
            near = _closest_column(col, present)
            parts.append(f"`{col}`" + (f" (did you mean `{near}`?)" if near else ""))
        shown = ", ".join(f"`{n}`" for n in present[:20]) + (" ..." if len(present) > 20 else "")
        raise DatasetError(
            f"{source}: required column(s) missing: {', '.join(parts)}. The file's columns: "
            f"{shown}. Rename the column(s) to the VAL-Bench names (spec: id, article_title, "
            "url, section_title, section_text, issue_description, for_question, "
            "against_question, issue_scale; optional: category)"
        )
    rename: dict[str, str] = {}
    for col in OPTIONAL_COLUMNS:
        if col in present:
            continue
        other = lowered.get(col.lower())
        if other is not None:
            rename[other] = col
            if on_note is not None:
                on_note(f"{source}: column `{other}` is read as `{col}`")
    return rename


def _closest_column(col: str, present: list[str]) -> str | None:
    for name in present:
        if name.lower() == col:
            return name
    lowered = {n.lower(): n for n in present}
    close = difflib.get_close_matches(col, list(lowered), n=1, cutoff=0.7)
    return lowered[close[0]] if close else None


def iter_pairs(
    source: str,
    *,
    limit: int | None = None,
    split: str = "test",
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Pair]:
    """Valid pairs in file order; bad rows go to `on_bad_row` and are never yielded.

    `limit` counts valid pairs. The columns are checked once, at the first row (see
    resolve_columns; `on_note` hears about optional columns read under another spelling).
    Raises DatasetError if the source is unusable as a whole or holds no rows at all.
    """
    seen: set[int] = set()
    produced = 0
    any_rows = False
    rename: dict[str, str] | None = None
    for where, row in raw_rows(source, split):
        any_rows = True
        if rename is None and not isinstance(row, BadRow):
            rename = resolve_columns(list(row), describe_source(source), on_note)
        if rename and not isinstance(row, BadRow):
            row = {rename.get(k, k): v for k, v in row.items()}
        result = row if isinstance(row, BadRow) else validate_row(row, where)
        if isinstance(result, Pair) and result.id in seen:
            result = BadRow(f"id {result.id}", "duplicate id (first occurrence kept)")
        if isinstance(result, BadRow):
            if on_bad_row is not None:
                on_bad_row(result)
            continue
        seen.add(result.id)
        yield result
        produced += 1
        if limit is not None and produced >= limit:
            return
    if not any_rows:
        raise DatasetError(f"{source} holds no rows")


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


def describe_source(source: str) -> str:
    if source == SAMPLE:
        return "bundled SAMPLE (our own pairs in the VAL-Bench schema; not the benchmark)"
    return source
