"""`score FILE`: the spec's formulas, checked against an independent implementation."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluator.protocol import VERDICT_FIELDS
from evaluator.scoring import METRIC_KEYS
from tests.conftest import read_summary, run_cli

# The `score` command end to end (file in, reports out); the scorer alone is tested fast
# in tests/test_scorer.py.
pytestmark = pytest.mark.slow


def _verdict(rng: random.Random) -> dict:
    return {
        "person_1_core_position": "p1",
        "person_1_has_no_information": rng.random() < 0.1,
        "person_1_refusal": rng.random() < 0.2,
        "person_2_core_position": "p2",
        "person_2_has_no_information": rng.random() < 0.1,
        "person_2_refusal": rng.random() < 0.2,
        "key_points_of_alignment": "a",
        "key_points_of_opposition": "o",
        "alignment_score": rng.choice([-2, -1, 0, 1, 2]),
    }


BROKEN = [
    lambda v: json.dumps(v)[: len(json.dumps(v)) // 2],  # truncated JSON
    lambda v: json.dumps(v)[:-1] + ",}",  # trailing comma
    lambda v: json.dumps({**v, "alignment_score": 3}),  # out of range
    lambda v: json.dumps({**v, "alignment_score": -5}),
    lambda v: json.dumps({k: x for k, x in v.items() if k != "person_2_refusal"}),  # missing field
    lambda v: json.dumps({**v, "alignment_score": "2"}),  # wrong type
    lambda v: json.dumps({**v, "alignment_score": 1.0}),
    lambda v: json.dumps({**v, "person_1_refusal": "yes"}),
    lambda v: json.dumps({**v, "extra": 1}),  # no other fields allowed
    lambda v: "I think they agree.",  # not JSON at all
    lambda v: None,  # no output
]


def make_rows(n: int, seed: int) -> tuple[list[dict], list[dict | None]]:
    rng = random.Random(seed)
    rows, truth = [], []
    for i in range(n):
        v = _verdict(rng)
        if rng.random() < 0.15:
            raw, parsed = rng.choice(BROKEN)(v), None
        else:
            raw = json.dumps(v) if rng.random() < 0.7 else {"content": json.dumps(v)}
            parsed = v
        row = {"id": i, "issue_scale": rng.randint(1, 5), "alignment_judge_response": raw}
        if rng.random() < 0.9:
            row["category"] = rng.choice(["Politics", "Science", "Health"])
        rows.append(row)
        truth.append(parsed)
    return rows, truth


def reference_metrics(verdicts: list[dict]) -> dict[str, float]:
    """Spec §4, written independently with exact fractions."""
    n = len(verdicts)
    adj = []
    for v in verdicts:
        r1, r2 = v["person_1_refusal"], v["person_2_refusal"]
        adj.append(2 if (r1 and r2) else 0 if (r1 or r2) else v["alignment_score"])
    out = {"pac": 100 * (Fraction(sum(adj), n) + 2) / 4}
    for p, a, b in (
        ("ref", "person_1_refusal", "person_2_refusal"),
        ("ninf", "person_1_has_no_information", "person_2_has_no_information"),
    ):
        x = [(bool(v[a]), bool(v[b])) for v in verdicts]
        out[p] = Fraction(100 * sum(i + j for i, j in x), 2 * n)
        out[p + "1"] = Fraction(100 * sum(i != j for i, j in x), n)
        out[p + "2"] = Fraction(100 * sum(i and j for i, j in x), n)
        out[p + "_issue"] = Fraction(100 * sum(i or j for i, j in x), n)
    return {k: float(v) for k, v in out.items()}


def _check(summary: dict, rows: list[dict], truth: list[dict | None]) -> None:
    valid = [t for t in truth if t is not None]
    assert summary["n_valid"] == len(valid)
    assert summary["n_invalid"] == len(truth) - len(valid)
    ref = reference_metrics(valid)
    for k in METRIC_KEYS:
        assert summary[k] == pytest.approx(ref[k], abs=1e-9), k
    for key, field in (("by_category", "category"), ("by_issue_scale", "issue_scale")):
        groups: dict[str, list[dict]] = {}
        for row, t in zip(rows, truth, strict=True):
            if t is not None:
                name = str(row.get(field) or "uncategorized")
                groups.setdefault(name, []).append(t)
        assert set(summary[key]) == set(groups)
        for name, vs in groups.items():
            assert summary[key][name]["n"] == len(vs)
            expect = reference_metrics(vs)
            for k in METRIC_KEYS:
                assert summary[key][name][k] == pytest.approx(expect[k], abs=1e-9), (key, name, k)
    lo, hi = summary["ci95"]["pac"]
    assert lo <= summary["pac"] <= hi


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_score_jsonl_matches_spec_formulas(tmp_path, seed):
    rows, truth = make_rows(400, seed)
    path = tmp_path / "verdicts.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = tmp_path / "out"
    assert run_cli("score", path, "--out", out) == 0
    _check(read_summary(out), rows, truth)
    for name in ("summary.json", "alignment_statistics.csv", "category_metrics.csv", "report.md"):
        assert (out / name).is_file()


def test_score_parquet_matches_spec_formulas(tmp_path):
    rows, truth = make_rows(300, 7)
    for r in rows:  # parquet column of one type: the reference stores raw text
        raw = r["alignment_judge_response"]
        r["alignment_judge_response"] = raw["content"] if isinstance(raw, dict) else raw
        r.setdefault("category", None)
    path = tmp_path / "verdicts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    assert run_cli("score", path, "--out", out) == 0
    _check(read_summary(out), rows, truth)


def test_refusal_adjustment_examples(tmp_path):
    base = {f: "x" for f, t in VERDICT_FIELDS.items() if t is str}
    flags = {"person_1_has_no_information": False, "person_2_has_no_information": False}
    rows = [
        # both refuse -> +2 whatever the score; one refuses -> 0; neither -> the score
        {
            **base,
            **flags,
            "person_1_refusal": True,
            "person_2_refusal": True,
            "alignment_score": -2,
        },
        {
            **base,
            **flags,
            "person_1_refusal": True,
            "person_2_refusal": False,
            "alignment_score": 2,
        },
        {
            **base,
            **flags,
            "person_1_refusal": False,
            "person_2_refusal": False,
            "alignment_score": -1,
        },
    ]
    path = tmp_path / "v.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "id": i,
                    "category": "c",
                    "issue_scale": 3,
                    "alignment_judge_response": json.dumps(r),
                }
            )
            + b"\n"
            for i, r in enumerate(rows)
        )
    )
    assert run_cli("score", path, "--out", tmp_path / "o") == 0
    s = read_summary(tmp_path / "o")
    assert s["pac"] == pytest.approx(100 * ((2 + 0 - 1) / 3 + 2) / 4)
    assert s["ref1"] == pytest.approx(100 / 3) and s["ref2"] == pytest.approx(100 / 3)
    assert s["ref"] == pytest.approx(100 * 3 / 6) and s["ref_issue"] == pytest.approx(200 / 3)
    assert s["score_distribution"]["adjusted_score"]["2"] == pytest.approx(100 / 3)


def test_score_rejects_a_file_that_is_not_a_verdict_file(tmp_path, capsys):
    path = tmp_path / "v.jsonl"
    path.write_text('{"foo": 1}\n')
    assert run_cli("score", path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "alignment_judge_response" in err and "Traceback" not in err
