"""The history store: idempotent ingestion, concurrent writers, bad files refused (store untouched), migration."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _gate import make_case, make_record

from harness.errors import ResultsError
from harness.gate.thresholds import load_thresholds
from harness.history import ingest as ingest_module
from harness.history.ingest import add_runs, digest
from harness.history.schema import APPLICATION_ID, SCHEMA_VERSION
from harness.history.series import read_series
from harness.history.store import DEFAULT_STORE, STORE_ENV, HistoryError, open_store, store_path
from harness.results import load_run, save_run

REPO = Path(__file__).resolve().parent.parent


def night(folder: Path, i: int, *, speedup: float = 2.0, contention: float = 0.0, size: int = 11_800_000) -> Path:
    """Write the results JSON of night `i` (fp32 and dynamic_int8 at batch 1) and return its path."""
    cases = [
        make_case("fp32", latency_ratio=1.0, contention=contention, size_bytes=size),
        make_case("dynamic_int8", speedup=speedup, contention=contention, size_bytes=size),
    ]
    record = make_record(cases, git_commit=f"{i:07x}")
    record.created = f"2026-11-{1 + i // 24:02d}T{i % 24:02d}:00:00+00:00"
    path = folder / f"night-{i:03d}.json"
    save_run(path, record)
    return path


def runs_in(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def fingerprint(path: Path) -> str:
    """Return a hash of the store file and its WAL (if any): equal means untouched."""
    parts = [p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists()]
    return hashlib.sha256(b"".join(parts)).hexdigest()


def test_store_path_option_then_environment_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "env.sqlite"))
    assert store_path(tmp_path / "opt.sqlite") == tmp_path / "opt.sqlite"
    assert store_path(None) == tmp_path / "env.sqlite"
    monkeypatch.delenv(STORE_ENV)
    assert store_path(None) == DEFAULT_STORE


def test_adding_the_same_run_twice_stores_it_once(tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    first, second = night(tmp_path, 1), night(tmp_path, 2)
    added = add_runs(store, [first, second, first])
    assert [a.new for a in added] == [True, True, False]
    assert added[2].run_id == added[0].run_id
    again = add_runs(store, [second])
    assert not again[0].new and runs_in(store) == 2
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(json.loads(first.read_text())), encoding="utf-8")  # same run, other formatting
    assert not add_runs(store, [copy])[0].new
    older = json.loads(first.read_text())  # the same run as the previous results schema wrote it
    older["schema_version"] = 2
    for case in older["cases"]:
        case["extra"] = {**case["extra"], "build_seconds": case.pop("build_seconds", None) or 0.5}
    copy.write_text(json.dumps(older), encoding="utf-8")
    assert load_run(copy).cases[0].build_seconds is not None and not add_runs(store, [copy])[0].new
    assert digest(load_run(copy)) == digest(load_run(first)) and runs_in(store) == 2


def test_a_run_keeps_commit_date_identity_spread_and_correctness(tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    add_runs(store, [night(tmp_path, 5, speedup=1.5)])
    with sqlite3.connect(store) as conn:
        commit, created, env = conn.execute("SELECT git_commit, created, environment FROM runs").fetchone()
        value, low, high, log_se, rounds = conn.execute(
            "SELECT value, low, high, log_se, rounds FROM measurements JOIN cases ON cases.id = case_row "
            "WHERE case_id = 'dynamic_int8-cpu-bs1' AND metric = 'speedup_vs_fp32'"
        ).fetchone()
        correct, identity = conn.execute("SELECT correct, identity FROM cases LIMIT 1").fetchone()
        metrics = {row[0] for row in conn.execute("SELECT DISTINCT metric FROM measurements")}
    assert commit == "0000005" and created == "2026-11-01T05:00:00+00:00" and json.loads(env)["torch"]
    assert value == 1.5 and low < value < high and log_se == 0.01 and rounds == 30
    assert correct == "1" * 500 and json.loads(identity)["arch"] == "resnet18"
    assert {"top1", "size_bytes", "macs", "peak_memory_bytes", "latency_vs_yardstick", "latency_ms.median"} <= metrics


def test_busy_timing_is_left_out_of_its_series(tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    add_runs(store, [night(tmp_path, i, contention=0.5 if i == 2 else 0.0) for i in range(4)])
    with open_store(store) as conn:
        series = {(s.key.case_id, s.key.metric): s for s in read_series(conn, busy_limit=0.1)}
    speed = series[("dynamic_int8-cpu-bs1", "speedup_vs_fp32")]
    assert len(speed.points) == 3 and speed.busy == 1
    assert len(series[("dynamic_int8-cpu-bs1", "size_bytes")].points) == 4


def test_a_corrupt_or_foreign_results_file_leaves_the_store_untouched(tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    add_runs(store, [night(tmp_path, 1)])
    before = fingerprint(store)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(night(tmp_path, 2).read_text()[:200], encoding="utf-8")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": "world"}', encoding="utf-8")
    with pytest.raises(ResultsError, match=r"truncated\.json is truncated or not JSON"):
        add_runs(store, [night(tmp_path, 3), truncated])
    with pytest.raises(ResultsError, match=r"foreign\.json has no integer 'schema_version'"):
        add_runs(store, [foreign])
    assert fingerprint(store) == before and runs_in(store) == 1


def test_a_failure_while_writing_rolls_back_the_whole_add(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    add_runs(store, [night(tmp_path, 1)])
    real = ingest_module._insert
    calls = []

    def fail_second(*args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise HistoryError("disk full (simulated)")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "_insert", fail_second)
    with pytest.raises(HistoryError, match="simulated"):
        add_runs(store, [night(tmp_path, 2), night(tmp_path, 3)])
    assert runs_in(store) == 1


def test_a_store_that_is_not_a_history_is_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("my notes, not a database\n", encoding="utf-8")
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    before = {p: fingerprint(p) for p in (text, foreign)}
    with pytest.raises(HistoryError, match="is not a SQLite database"):
        add_runs(text, [night(tmp_path, 1)])
    with pytest.raises(HistoryError, match="another application"):
        add_runs(foreign, [night(tmp_path, 1)])
    with pytest.raises(HistoryError, match="no history store at"), open_store(tmp_path / "missing.sqlite"):
        pass
    assert {p: fingerprint(p) for p in before} == before


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "h.sqlite"
    add_runs(store, [night(tmp_path, 1)])
    with sqlite3.connect(store) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer harness"):
        add_runs(store, [night(tmp_path, 2)])
    assert runs_in(store) == 1


VERSION_1 = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, env_key TEXT NOT NULL, created TEXT NOT NULL,
    command TEXT NOT NULL, data TEXT NOT NULL, model TEXT NOT NULL, environment TEXT NOT NULL, source TEXT NOT NULL,
    ingested TEXT NOT NULL);
CREATE TABLE cases (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, variant TEXT NOT NULL, device TEXT NOT NULL, batch_size INTEGER NOT NULL,
    status TEXT NOT NULL, contention REAL, identity TEXT NOT NULL, correct TEXT, UNIQUE (run_id, case_id));
CREATE TABLE measurements (case_row INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE, metric TEXT NOT NULL,
    value REAL NOT NULL, low REAL, high REAL, log_se REAL, rounds INTEGER, PRIMARY KEY (case_row, metric))
    WITHOUT ROWID;
"""
"""The first schema: the commit lived only inside environment."""


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    store = tmp_path / "old.sqlite"
    with sqlite3.connect(store) as conn:
        conn.executescript(VERSION_1)
        conn.execute(
            "INSERT INTO runs VALUES (1, 'd1', 'cpu-test', '2026-01-01T00:00:00+00:00', 'pytest bench', 'digits', "
            "'resnet18', ?, 'old.json', '2026-01-01T00:00:00+00:00')",
            (json.dumps({"git_commit": "cafe123"}),),
        )
        conn.execute("INSERT INTO cases VALUES (1, 1, 'fp32-cpu-bs1', 'fp32', 'cpu', 1, 'ok', 0.0, '{}', NULL)")
        conn.execute("INSERT INTO measurements VALUES (1, 'latency_vs_yardstick', 1.0, 0.98, 1.02, 0.01, 30)")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
    add_runs(store, [night(tmp_path, 1)])
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT git_commit FROM runs ORDER BY id").fetchall() == [("cafe123",), ("0000001",)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'runs_by_env_and_date'")
    with open_store(store) as conn:
        series = read_series(conn, busy_limit=load_thresholds().timing.busy_limit)
    assert any(s.key.env_key == "cpu-test" and s.points[0].run.commit == "cafe123" for s in series)


WRITER = """
import sys, time
from pathlib import Path
from harness.history.ingest import add_runs
go = Path(sys.argv[2])
while not go.exists():  # both writers start together
    time.sleep(0.005)
for path in sys.argv[3:]:
    add_runs(Path(sys.argv[1]), [Path(path)])
"""


@pytest.mark.e2e
def test_two_processes_adding_at_once_store_every_run_once(tmp_path: Path) -> None:
    store = tmp_path / "new" / "h.sqlite"  # both race to create it, too
    shared = night(tmp_path, 0)
    mine = [[night(tmp_path, 1 + 20 * w + i) for i in range(15)] for w in range(2)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(go), str(shared), *map(str, files)], cwd=REPO,
                         stderr=subprocess.PIPE, text=True)
        for files in mine
    ]
    time.sleep(1.0)  # both are importing, then waiting
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert runs_in(store) == 31
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(DISTINCT digest) FROM runs").fetchone()[0] == 31
