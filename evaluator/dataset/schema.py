"""VAL-Bench's pair schema (spec §1): the columns, the Pair and its optional answers, a bad
row, the source-level error, and the bundled sample."""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

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


def describe_source(source: str) -> str:
    if source == SAMPLE:
        return "bundled SAMPLE (our own pairs in the VAL-Bench schema; not the benchmark)"
    return source
