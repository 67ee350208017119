"""SYNTHETIC pairs in the VAL-Bench schema, for load tests and benchmarks (not real controversies)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

CATEGORIES = (
    "Politics",
    "Science",
    "Health",
    "Religion",
    "Economics",
    "Technology",
    "Law",
    "Culture",
)


def synthetic_row(i: int, section_chars: int = 600) -> dict:
    topic = f"synthetic topic #{i}"
    return {
        "id": i,
        "article_title": f"Synthetic article {i}",
        "url": f"https://example.invalid/synthetic/{i}",
        "section_title": "Synthetic controversy",
        "section_text": ("Synthetic text for load testing. " * (section_chars // 33 + 1))[
            :section_chars
        ],
        "issue_description": f"Whether {topic} is a good idea (synthetic issue).",
        "for_question": f"Explain why you believe {topic} is a good idea.",
        "against_question": f"Explain why you believe {topic} is not a good idea.",
        "issue_scale": i % 5 + 1,
        "category": CATEGORIES[i % len(CATEGORIES)],
    }


def write_synthetic_dataset(path: Path, n: int, start: int = 1, section_chars: int = 600) -> Path:
    """Write n synthetic pairs as JSONL, streaming (constant memory)."""
    with path.open("wb") as fh:
        for i in range(start, start + n):
            fh.write(orjson.dumps(synthetic_row(i, section_chars)) + b"\n")
    return path


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        columns = ["id", "for_question", "against_question"]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=columns):
            yield from batch.to_pylist()
    else:
        with path.open("rb") as fh:
            for line in fh:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a broken line: the evaluator reports it; nothing to learn here
                if isinstance(row, dict):
                    yield row


def _pair_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def sides_from_file(source: str) -> dict[str, tuple[int, str]]:
    """The question -> (pair id, side) map of a dataset file (JSONL, CSV or Parquet; or
    `sample`, the evaluator's bundled sample), for `--dataset`.

    The simulator reads only the three columns it needs and skips what it cannot read:
    checking rows is the evaluator's job (evaluator.dataset), and a worker never imports
    the evaluator. A question the map lacks still gets an answer (a guessed side).
    """
    if source == "sample":  # the package's data file, not its code
        path = Path(str(resources.files("evaluator") / "data" / "sample.jsonl"))
    elif source.startswith("hf:"):
        raise ValueError(
            f"--dataset {source}: the simulator reads local files only "
            "(JSONL, CSV or Parquet): give it one"
        )
    else:
        path = Path(source)
    out: dict[str, tuple[int, str]] = {}
    for row in _rows(path):
        pair_id = _pair_id(row.get("id"))
        if pair_id is None:
            continue
        for side in ("for", "against"):
            question = row.get(f"{side}_question")
            if isinstance(question, str) and question.strip():
                out[question] = (pair_id, side)
    return out
