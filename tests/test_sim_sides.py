"""The simulator's own dataset reading (workers never import the evaluator) gives the same
question -> side map as the evaluator's reader, in each file format."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from evaluator.dataset import iter_pairs
from workers.simulated import sides_from_pairs
from workers.simulated.data import sides_from_file, synthetic_row


def test_sample_matches_the_evaluator() -> None:
    assert sides_from_file("sample") == sides_from_pairs(iter_pairs("sample"))


def test_each_format(tmp_path: Path) -> None:
    rows = [synthetic_row(i, 40) for i in range(1, 6)]
    expected = {r[f"{side}_question"]: (r["id"], side) for r in rows for side in ("for", "against")}
    jsonl = tmp_path / "d.jsonl"
    # A broken line and a row without an id are skipped, as the evaluator skips them.
    jsonl.write_bytes(
        b"\n".join(orjson.dumps(r) for r in rows)
        + b"\n{broken\n"
        + orjson.dumps({"for_question": "no id", "against_question": "x"})
        + b"\n"
    )
    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        assert sides_from_file(str(tmp_path / name)) == expected, name
    assert sides_from_file(str(jsonl)) == sides_from_pairs(iter_pairs(str(jsonl)))
