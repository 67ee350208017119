"""SYNTHETIC pairs in the VAL-Bench schema, for load tests and benchmarks (not real controversies)."""

from __future__ import annotations

from pathlib import Path

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
