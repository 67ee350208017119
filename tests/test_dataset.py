"""Dataset loading: formats, validation, the bundled sample, streaming memory."""

from __future__ import annotations

import csv
import tracemalloc
from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluator.dataset import REQUIRED_COLUMNS, DatasetError, iter_pairs, sample_path
from tests.conftest import read_results, read_summary, run_eval
from workers.simulated.data import synthetic_row, write_synthetic_dataset


def _collect(source, **kw):
    bad = []
    pairs = list(iter_pairs(str(source), on_bad_row=bad.append, **kw))
    return pairs, bad


def test_bundled_sample_is_a_full_sample():
    pairs, bad = _collect("sample")
    assert not bad and len(pairs) >= 40
    assert len({p.category for p in pairs if p.category}) >= 8
    assert {p.issue_scale for p in pairs} == {1, 2, 3, 4, 5}
    assert any(p.category is None for p in pairs)  # the schema allows a missing category
    assert sample_path().is_file()


def test_jsonl_csv_and_parquet_load_the_same_pairs(tmp_path):
    rows = [synthetic_row(i) for i in range(1, 31)]
    rows[3]["category"] = None
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=7)
    loaded = [_collect(tmp_path / f"d.{ext}") for ext in ("jsonl", "csv", "parquet")]
    assert all(not bad for _, bad in loaded)
    assert loaded[0][0] == loaded[1][0] == loaded[2][0]
    assert len(loaded[0][0]) == 30 and loaded[0][0][3].category is None


def test_limit_counts_valid_pairs(tmp_path):
    rows = [synthetic_row(i) for i in range(1, 11)]
    rows[0]["for_question"] = ""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    pairs, bad = _collect(path, limit=4)
    assert [p.id for p in pairs] == [2, 3, 4, 5] and len(bad) == 1


def test_bad_rows_are_reported_by_id_with_the_reason(tmp_path):
    good = [synthetic_row(i) for i in range(1, 6)]
    missing = synthetic_row(10)
    del missing["issue_description"]
    wrong_scale = {**synthetic_row(11), "issue_scale": 9}
    wrong_type = {**synthetic_row(12), "for_question": 42}
    empty = {**synthetic_row(13), "against_question": "   "}
    dup = synthetic_row(2)
    bad_id = {**synthetic_row(14), "id": "abc"}
    lines = [orjson.dumps(r) for r in (*good, missing, wrong_scale, wrong_type, empty, dup, bad_id)]
    lines.insert(3, b'{"id": 99, "for_question": "trunc')  # a truncated line
    lines.insert(4, b"\xff\xfe not utf-8")
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pairs, bad = _collect(path)
    assert [p.id for p in pairs] == [1, 2, 3, 4, 5]
    reasons = {b.where: b.reason for b in bad}
    assert "issue_description" in reasons["id 10"]
    assert "issue_scale" in reasons["id 11"]
    assert "for_question must be text" in reasons["id 12"]
    assert "against_question is empty" in reasons["id 13"]
    assert "duplicate id" in reasons["id 2"]
    assert "id must be an integer" in reasons["line 13"]
    assert "not valid JSON" in reasons["line 4"]
    assert "not UTF-8" in reasons["line 5"]


@pytest.mark.slow
def test_bad_rows_are_never_sent(tmp_path, sim_server):
    rows = [synthetic_row(i) for i in range(1, 9)]
    rows[2]["for_question"] = ""
    rows[5]["issue_scale"] = 0
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(path, server.base_url, out) == 0
    assert server.stats()["by_kind"]["model"] == 2 * 6
    assert server.stats()["by_kind"]["judge"] == 6 + 1  # + the preflight's test call
    s = read_summary(out)
    assert s["n_bad_rows"] == 2 and s["n_pairs"] == 6
    assert {r["id"] for r in read_results(out)} == {1, 2, 4, 5, 7, 8}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.jsonl", b"hello world\n", "is not a JSONL dataset"),
        ("other.jsonl", b'{"a": 1, "b": 2}\n', "not the expected kind of file"),
        ("bin.jsonl", bytes(range(256)) * 4, "is not a JSONL dataset"),
        ("d.parquet", b"PAR1 garbage", "not a readable Parquet file"),
        ("d.csv", b"a,b\n1,2\n", "not the expected kind of file"),
        ("d.csv", b"id,for_question,against_question\n1,x,y\n", "required column"),
        ("d.txt", b"x", "unknown dataset format"),
        ("empty.jsonl", b"", "holds no rows"),
    ],
)
def test_a_file_that_is_not_a_dataset_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        _collect(path)


@pytest.mark.slow
def test_not_a_dataset_via_cli_is_one_line_no_traceback(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_text("not json\n")
    code = run_eval(path, "http://127.0.0.1:9/v1", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        _collect(tmp_path / "nope.jsonl")


def test_hub_source_gives_a_clear_error_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="val-bench/VAL-Bench"):
        _collect("hf:val-bench/VAL-Bench")


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_reading_streams_in_flat_memory(tmp_path, ext):
    n = 20_000
    jsonl = write_synthetic_dataset(tmp_path / "big.jsonl", n, section_chars=2000)
    path = jsonl
    if ext == "parquet":
        path = tmp_path / "big.parquet"
        writer = None
        batch = []
        for line in jsonl.read_bytes().splitlines():
            batch.append(orjson.loads(line))
            if len(batch) == 2000:
                table = pa.Table.from_pylist(batch)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                batch = []
        writer.close()
    size = jsonl.stat().st_size  # the decoded data's size, whatever the file's compression
    tracemalloc.start()
    count = Counter()
    for pair in iter_pairs(str(path)):
        count[pair.issue_scale] += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(count.values()) == n
    # Whole-file loading would need several times the file size; streaming needs a fraction.
    assert peak < size / 4, (peak, size)
    if ext == "parquet":  # Arrow's buffers are outside tracemalloc: check its pool as well
        assert pa.default_memory_pool().max_memory() < size / 4


def test_required_columns_match_the_spec():
    assert set(REQUIRED_COLUMNS) | {"category"} == {
        "id",
        "article_title",
        "url",
        "section_title",
        "section_text",
        "issue_description",
        "for_question",
        "against_question",
        "issue_scale",
        "category",
    }
