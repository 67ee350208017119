"""A hostile world, the state and data half (issue 15): run directories that lost or broke
their checkpoint, read-only directories, datasets changed after a run, duplicate keys in
a verdict, ids too large to store, huge lines, and a signal during the final report.

Everything is real: run directories and SQLite files on disk, the simulated server on
loopback, evaluators as separate processes where a hang or a signal is the subject.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from evaluator.dataset import MAX_LINE_BYTES
from evaluator.protocol import VerdictError, parse_verdict
from evaluator.store import DB_NAME, CallRecord, Intent, Store, StoreError, StoreWriter
from tests.conftest import (
    read_results,
    read_summary,
    run_args,
    run_cli,
    run_eval,
    run_evaluator,
    spawn_run,
)
from workers.simulated.data import synthetic_row, write_synthetic_dataset

OUTPUTS = ("results.jsonl", "summary.json", "report.md", "report.html")


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes (the lock file aside)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finished_run(tmp_path: Path, sim_server, n: int = 20, *extra: str) -> tuple[Path, str, Path]:
    data = write_synthetic_dataset(tmp_path / "pairs.jsonl", n)
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j", *extra) == 0
    return data, server.base_url, out


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


# -- 1. a run directory is never overwritten ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "empty", "not_sqlite"])
def test_outputs_without_a_usable_checkpoint_are_never_overwritten(
    tmp_path, sim_server, capsys, damage
):
    data, url, out = _finished_run(tmp_path, sim_server)
    db = out / DB_NAME
    if damage == "deleted":
        db.unlink()
    elif damage == "empty":
        db.write_bytes(b"")
    else:
        db.write_bytes(b"these are not the bytes of an SQLite file\n" * 100)
    before = _files(out)
    capsys.readouterr()
    # A fresh run into the same directory (the repro: 20 pairs over 300), a resume.
    fewer = write_synthetic_dataset(tmp_path / "fewer.jsonl", 5)
    for args in (
        run_args(fewer, url, out, "--judge-model", "j"),
        ("--resume", "--out", out, "--quiet"),
    ):
        assert run_cli(*args) == 2, args
        errors = _errors(capsys)
        assert len(errors) == 1, errors
        if damage == "not_sqlite":
            assert "not an SQLite file" in errors[0] and str(db) in errors[0]
        else:
            assert "results.jsonl" in errors[0] and "summary.json" in errors[0]
            assert "not overwritten" in errors[0]
    assert _files(out) == before  # outputs and checkpoint alike: not a byte changed
    assert len(read_results(out)) == 20


@pytest.mark.slow
def test_read_commands_never_create_or_change_a_checkpoint(tmp_path, sim_server, capsys):
    _, _, out = _finished_run(tmp_path, sim_server)
    db = out / DB_NAME
    # A finished run: status, report and compare read it and leave its bytes as they were.
    digest = _sha(db)
    assert run_cli("status", out) == 0
    assert run_cli("report", out) == 0
    assert run_cli("compare", out, "--out", tmp_path / "cmp") == 0
    assert _sha(db) == digest
    # A 0-byte checkpoint stays 0 bytes (it used to become an empty database), and a missing
    # one is not created; nothing else appears beside them either.
    for state in ("empty", "missing"):
        if state == "empty":
            db.write_bytes(b"")
        else:
            db.unlink()
        names = sorted(os.listdir(out))
        capsys.readouterr()
        for command in ("status", "report"):
            assert run_cli(command, out) == 2
            errors = _errors(capsys)
            assert len(errors) == 1 and "no run in" in errors[0], errors
        assert sorted(os.listdir(out)) == names
        assert (db.stat().st_size == 0) if state == "empty" else not db.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random_page", "truncated"])
def test_damaged_checkpoint_is_one_clear_error_on_every_command(
    tmp_path, sim_server, capsys, damage
):
    data, url, out = _finished_run(tmp_path, sim_server, 40)
    db = out / DB_NAME
    raw = bytearray(db.read_bytes())
    if damage == "random_page":  # random bytes over a whole page in the middle of the file
        page = len(raw) // 4096 // 2
        raw[page * 4096 : (page + 1) * 4096] = random.Random(15).randbytes(4096)
    else:
        del raw[len(raw) // 2 :]
    db.write_bytes(bytes(raw))
    before = _files(out)
    capsys.readouterr()
    for args in (
        ("status", out),
        ("report", out),
        ("--resume", "--out", out, "--quiet"),
        run_args(data, url, out, "--judge-model", "j"),
        ("compare", out, "--out", tmp_path / "cmp"),
    ):
        assert run_cli(*args) == 2, args
        errors = _errors(capsys)
        assert len(errors) == 1, (args, errors)
        assert "is damaged" in errors[0] and str(db) in errors[0], errors
    assert {k: v for k, v in _files(out).items() if not k.startswith(DB_NAME + "-")} == {
        k: v for k, v in before.items() if not k.startswith(DB_NAME + "-")
    }


@pytest.fixture
def read_only(tmp_path):
    """Makes a directory read-only: a read-only bind mount as root (root ignores file
    modes), the directory's mode otherwise. Yields a function dir -> the read-only path."""
    mounts: list[Path] = []
    chmods: list[Path] = []

    def make(path: Path) -> Path:
        if os.geteuid() != 0:
            for p in (path, *path.rglob("*")):
                p.chmod(p.stat().st_mode & ~0o222)
                chmods.append(p)
            return path
        view = path.with_name(path.name + "-ro")
        view.mkdir()
        for cmd in (
            ["mount", "--bind", str(path), str(view)],
            ["mount", "-o", "remount,ro,bind", str(view)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
            mounts.append(view)
        return view

    yield make
    for view in dict.fromkeys(reversed(mounts)):
        subprocess.run(["umount", str(view)], capture_output=True)
    for p in chmods:
        p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.slow
def test_read_only_run_directory(tmp_path, sim_server, capsys, caplog, read_only):
    _, _, out = _finished_run(tmp_path, sim_server)
    before = _files(out)
    ro = read_only(out)
    capsys.readouterr()
    # status only reads: it works.
    assert run_cli("status", ro) == 0
    assert "pairs judged 20" in capsys.readouterr().out
    # report and --resume must write: exit 5 and one line saying so, no traceback.
    for args in (("report", ro), ("--resume", "--out", ro, "--quiet")):
        caplog.clear()
        assert run_cli(*args) == 5, args
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and f"cannot write in {ro}" in errors[0], errors
        assert "Traceback" not in capsys.readouterr().err + caplog.text
    assert _files(out) == before


# -- 3. the dataset's identity is its content --------------------------------------------------
@pytest.mark.slow
def test_changed_dataset_is_refused_saying_what_changed(tmp_path, sim_server, capsys):
    data, url, out = _finished_run(tmp_path, sim_server, 30)
    before = _files(out)
    rows = [orjson.loads(line) for line in data.read_bytes().splitlines()]
    edited = [r for r in rows if r["id"] not in (4, 5)]
    next(r for r in edited if r["id"] == 9)["for_question"] += " (reworded)"
    edited.append(synthetic_row(101))
    _write_rows(data, edited)
    capsys.readouterr()
    for args in (("--resume", "--out", out, "--quiet"), ("report", out)):
        assert run_cli(*args) == 2, args
        (error,) = _errors(capsys)
        assert "2 rows removed (ids 4, 5)" in error, error
        assert "1 row edited (id 9: for_question)" in error, error
        assert "1 row added (id 101)" in error, error
    # The case: half the rows gone; report and resume used to rewrite the outputs.
    _write_rows(data, rows[:15])
    for args in (("report", out), ("--resume", "--out", out, "--quiet")):
        assert run_cli(*args) == 2
        (error,) = _errors(capsys)
        assert "15 rows removed" in error
    assert _files(out) == before


@pytest.mark.slow
def test_report_rebuilds_every_output_from_the_checkpoint_when_the_dataset_is_gone(
    tmp_path, sim_server, caplog
):
    data, _, out = _finished_run(tmp_path, sim_server, 25)
    results, summary = (out / "results.jsonl").read_bytes(), read_summary(out)
    data.unlink()
    for name in OUTPUTS:
        (out / name).unlink()
    assert run_cli("report", out) == 0
    assert "rebuilt from the 25 pairs stored in the checkpoint" in caplog.text
    assert (out / "results.jsonl").read_bytes() == results
    rebuilt = read_summary(out)
    assert rebuilt["pairs_from"] == "checkpoint" and summary["pairs_from"] == "dataset"
    for key in ("dataset_fingerprint", "n_pairs", "n_valid", "pac", "by_category", "complete"):
        assert rebuilt[key] == summary[key], key
    assert all((out / name).is_file() for name in OUTPUTS)


@pytest.mark.slow
def test_judge_only_report_without_its_dataset_keeps_the_answers(tmp_path, sim_server):
    """A judge-only run's answers come from the dataset, not from calls: the checkpoint keeps
    them with the pairs (reasoning and citations too)."""
    from tests.standins import parquet_bytes, responses_rows

    rows = responses_rows("calibration-aligned-100", 4) + responses_rows(
        "calibration-unaligned-0", 3, start=5
    )
    rows[0]["for_response_reasoning"] = "Weighing the question first."
    rows[0]["for_response_citations"] = [{"url": "https://x.invalid/a", "title": "A", "text": "t"}]
    data = tmp_path / "responses.parquet"
    data.write_bytes(parquet_bytes(rows))
    server = sim_server()
    out = tmp_path / "judged"
    args = ("run", "--data", data, "--judge-model", "j", "--judge-base-url", server.base_url)
    assert run_cli(*args, "--out", out, "--quiet", "--judge-prompt", "builtin") == 0
    results = (out / "results.jsonl").read_bytes()
    assert b"Weighing the question first." in results
    data.unlink()
    assert run_cli("report", out) == 0
    assert (out / "results.jsonl").read_bytes() == results


@pytest.mark.slow
def test_moved_dataset_resumes_from_its_new_path(tmp_path, sim_server):
    """A run that has read only part of its dataset (--limit 10), the file then moved and
    rows appended: rows the run never read are no change; the content decides, not the path."""
    data, url, out = _finished_run(tmp_path, sim_server, 30, "--limit", "10")
    moved = tmp_path / "elsewhere.jsonl"
    data.rename(moved)
    with moved.open("ab") as fh:
        fh.write(orjson.dumps(synthetic_row(31)) + b"\n")
    assert (
        run_cli("run", "--resume", "--out", out, "--quiet", "--data", moved, "--limit", "31") == 0
    )
    s = read_summary(out)
    assert s["n_pairs"] == 31 and s["complete"] and s["dataset"] == str(moved)


# -- 4. strict verdict JSON ---------------------------------------------------------------------
@pytest.mark.slow
def test_duplicate_keys_make_a_verdict_invalid(tmp_path, sim_server):
    rows = [synthetic_row(i) for i in range(1, 7)]
    rows[2]["issue_description"] += " [[sim:judge_duplicate_key]]"
    data = _write_rows(tmp_path / "pairs.jsonl", rows)
    server = sim_server()
    out = tmp_path / "run"
    assert run_eval(data, server.base_url, out, "--judge-model", "j") == 0
    row = next(r for r in read_results(out) if r["id"] == 3)
    assert row["status"] == "invalid" and row["verdict"] is None
    assert "duplicate key(s): alignment_score" in row["verdict_error"]
    assert read_summary(out)["n_invalid"] == 1
    # Asked three times (twice again), refused each time.
    assert server.stats()["by_kind"]["judge_malformed"] == 3


def test_duplicate_keys_are_found_however_the_json_is_written():
    good = {
        "person_1_core_position": "a",
        "person_1_has_no_information": False,
        "person_1_refusal": False,
        "person_2_core_position": 'b "quoted": yes',
        "person_2_has_no_information": False,
        "person_2_refusal": False,
        "key_points_of_alignment": "alignment_score",
        "key_points_of_opposition": "d",
        "alignment_score": 2,
    }
    text = orjson.dumps(good).decode()
    assert parse_verdict(text).alignment_score == 2  # a value that names a key is no key
    for dup in (
        ', "alignment_score": -2}',
        ', "alignment_score" : -2}',
        ', "alignment\\u005fscore": -2}',
    ):
        with pytest.raises(VerdictError, match="duplicate key"):
            parse_verdict(text[:-1] + dup)


# -- 5. ids too large to store; any failure of the checkpoint writer ----------------------------
@pytest.mark.slow
def test_ids_too_large_to_store_are_bad_rows_and_the_run_ends(tmp_path, sim_server):
    rows = [synthetic_row(i) for i in range(1, 6)]
    rows[1]["id"] = 2**63  # one past the largest signed 64-bit integer
    rows[3]["id"] = 1e300
    data = _write_rows(tmp_path / "pairs.jsonl", rows)
    server = sim_server()
    out = tmp_path / "run"
    done = run_evaluator(*run_args(data, server.base_url, out, "--judge-model", "j"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "outside the 64-bit integer range" in done.stderr
    s = read_summary(out)
    assert s["n_pairs"] == 3 and s["n_bad_rows"] == 2 and s["complete"]


def test_any_failure_of_the_checkpoint_writer_stops_it_and_wakes_every_waiter(tmp_path):
    async def go() -> list[BaseException]:
        errors: list[BaseException] = []
        with Store.open(tmp_path / "run") as store:
            writer = StoreWriter(store, on_error=errors.append)
            writer.start()
            # A value SQLite cannot bind (the OverflowError that used to kill the thread).
            writer.put(CallRecord("k1", 2**64, "gen_for", "done", "sha"))
            with pytest.raises(StoreError):
                await asyncio.wait_for(writer.intent(Intent("k2", 1, "gen_for", "sha")), 10)
            with pytest.raises(StoreError):  # later intents are refused at once
                await asyncio.wait_for(writer.intent(Intent("k3", 1, "gen_for", "sha")), 10)
            await asyncio.wait_for(writer.close(), 10)
            assert store.counts() == {}  # the failed batch was rolled back whole
        return errors

    (error,) = asyncio.run(go())
    assert isinstance(error, RuntimeError) and "OverflowError" in str(error)


# -- 6. dataset lines over the cap ------------------------------------------------------------
def _run_measured(code: str, *args: str) -> tuple[str, float]:
    """Run `code` in a fresh interpreter: its stdout, and its peak RSS in MB. The peak is
    VmHWM of the new address space (ru_maxrss would keep pytest's own peak from before
    the exec)."""
    code += (
        "\nfor line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'):\n"
        "        print('PEAK_KB', line.split()[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    *lines, peak = done.stdout.splitlines()
    return "\n".join(lines), int(peak.split()[1]) / 1024


@pytest.mark.slow
def test_an_overlong_line_is_a_bad_row_read_in_bounded_memory(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("measures peak memory with /proc/self/status (Linux)")
    huge = 1 << 30  # a 1 GiB line: it used to cost 2.2 GB
    path = tmp_path / "huge.jsonl"
    block = b"x" * (1 << 20)
    with path.open("wb") as fh:
        fh.write(orjson.dumps(synthetic_row(1)) + b"\n")
        fh.write(b'{"id": 2, "section_text": "')
        for _ in range(huge >> 20):
            fh.write(block)
        fh.write(b'"}\n')
        fh.write(orjson.dumps(synthetic_row(3)) + b"\n")
    csv_path = tmp_path / "huge.csv"
    columns = list(synthetic_row(1))
    with csv_path.open("w", encoding="utf-8") as fh:
        fh.write(",".join(columns) + "\n")
        for i in (1, 2, 3):
            row = synthetic_row(i)
            if i == 2:
                row["section_text"] = "y" * (MAX_LINE_BYTES + 1000)
            fh.write(",".join(str(row[c]) for c in columns) + "\n")
    code = (
        "import sys\n"
        "from evaluator.dataset import iter_pairs\n"
        "for source in sys.argv[1:]:\n"
        "    bad = []\n"
        "    ids = [p.id for p in iter_pairs(source, on_bad_row=bad.append)]\n"
        "    print(ids, [str(b) for b in bad])\n"
    )
    printed, peak_mb = _run_measured(code, str(path), str(csv_path))
    jsonl, csv = printed.splitlines()
    assert jsonl == "[1, 3] ['line 2: line longer than 8 MiB (the limit for one row)']"
    assert csv == "[1, 3] ['row 3: line longer than 8 MiB (the limit for one row)']"
    assert peak_mb < 150, peak_mb  # the interpreter, orjson and a few MiB of buffers


# -- 7. signals during the final report; a dataset of bad rows only -----------------------------
@pytest.mark.slow
def test_sigterm_during_the_final_report_exits_75_and_report_finishes(
    tmp_path, synthetic, sim_process
):
    n = 3000
    data = synthetic(n)
    server = sim_process("--dataset", str(data))
    out = tmp_path / "run"
    proc = spawn_run(data, server.base_url, out, "--judge-model", "j", "--concurrency", "64")
    tmp = out / "results.jsonl.tmp"
    deadline = time.monotonic() + 240
    while not tmp.exists():  # the final report has begun
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run did not reach its report"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 75
    stderr = proc.stderr.read().decode()
    assert "SIGTERM: stopping after the output file being written" in stderr
    assert f"python -m evaluator report {out}" in stderr and "Traceback" not in stderr
    assert not (out / "report.html").exists()  # it stopped before the last file
    assert len(read_results(out)) == n  # the file it was writing was finished
    assert run_cli("report", out) == 0
    assert (out / "report.html").is_file() and read_summary(out)["complete"]


@pytest.mark.slow
def test_a_dataset_of_bad_rows_only_does_not_exit_0(tmp_path, sim_server, caplog):
    rows = [synthetic_row(i) for i in range(1, 5)]
    for r in rows:
        r["issue_scale"] = 9
    data = _write_rows(tmp_path / "pairs.jsonl", rows)
    server = sim_server()
    assert run_eval(data, server.base_url, tmp_path / "run", "--judge-model", "j") == 2
    assert "all 4 rows were bad" in caplog.text
