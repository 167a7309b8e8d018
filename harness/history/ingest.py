"""Adding runs to the history: every results file checked first, then all written in one transaction, each run once."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.history.store import HistoryError, open_store
from harness.results import METRICS, CaseResult, RunRecord, load_run


@dataclass(frozen=True)
class Added:
    """What `add_runs` did with one results file: its run's row id, and whether it was new to the store."""

    path: Path
    run_id: int
    new: bool
    env_key: str
    created: str
    cases: int


_BITS = bytes.maketrans(b"\x00\x01", b"01")


def bits(correct: list[bool] | None) -> str | None:
    """Return per-image correctness as the results JSON packs it ("0110..."), fast (it is 40,000 lists per 1,000
    runs of 40 cases)."""
    return None if correct is None else bytes(correct).translate(_BITS).decode("ascii")


def digest(record: RunRecord) -> str:
    """Return the SHA-256 of what identifies a run: its environment key, start time, command, data, model and case
    ids. The same run has the same digest whatever schema version, formatting or later annotation its file has."""
    identity = [record.env_key, record.created, record.command, record.data, record.model,
                sorted(c.case_id for c in record.cases)]
    return hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode("utf-8")).hexdigest()


def _checked_created(record: RunRecord, path: Path) -> str:
    try:
        when = datetime.fromisoformat(record.created)
    except ValueError as exc:
        raise HistoryError(f"{path}: 'created' is {record.created!r}, not an ISO date; it is not a run the harness "
                           "wrote") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="seconds")


def measurements(case: CaseResult) -> list[tuple[str, float, float | None, float | None, float | None, int | None]]:
    """Return (metric, value, low, high, log_se, rounds) for every metric the case has (results.METRICS, judged or
    not, with the spread of the timing ratios) and every number of its latency summary (as latency_ms.<name>)."""
    rows = []
    for metric in METRICS:
        value = metric.read(case) if metric.applies(case) else None
        if value is None:
            continue
        spread = case.ratios.get(metric.name) or {}
        rows.append((metric.name, float(value), _num(spread.get("low")), _num(spread.get("high")),
                     _num(spread.get("log_se")), _int(spread.get("rounds"))))
    for name, value in case.latency_ms.items():
        if _num(value) is not None:
            rows.append((f"latency_ms.{name}", float(value), None, None, None, None))
    return rows


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _insert(conn: sqlite3.Connection, record: RunRecord, run_digest: str, created: str, source: str) -> int:
    commit = record.environment.get("git_commit")
    cursor = conn.execute(
        "INSERT INTO runs (digest, env_key, created, git_commit, command, data, model, environment, source, ingested)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_digest, record.env_key, created, commit if isinstance(commit, str) else None, record.command,
         record.data, record.model, json.dumps(record.environment, sort_keys=True), source,
         datetime.now(UTC).isoformat(timespec="seconds")),
    )
    run_id = int(cursor.lastrowid or 0)
    for case in record.cases:
        correct = bits(case.correct)
        row = conn.execute(
            "INSERT INTO cases (run_id, case_id, variant, device, batch_size, status, contention, identity, correct)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, case.case_id, case.variant, case.device, case.batch_size, case.status, case.contention,
             json.dumps(case.identity, sort_keys=True), correct),
        ).lastrowid
        conn.executemany(
            "INSERT INTO measurements (case_row, metric, value, low, high, log_se, rounds)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(row, *m) for m in measurements(case)],
        )
    return run_id


def add_runs(store: Path, paths: Sequence[Path]) -> list[Added]:
    """Add the runs in the results JSON `paths` to the history at `store` (created if need be); return what happened.

    Every file is read and checked first: a missing, corrupt or foreign one raises (ResultsError or HistoryError,
    naming the file) before the store is opened. All new runs are then written in ONE transaction, so an `add` stores
    all of its files or none. A run already stored (same `digest`) is not stored again.
    """
    records: list[tuple[Path, RunRecord, str, str]] = []
    for path in paths:
        record = load_run(Path(path))
        if not record.cases:
            raise HistoryError(f"{path} holds a run with no cases; there is nothing to keep")
        records.append((Path(path), record, digest(record), _checked_created(record, Path(path))))
    added: list[Added] = []
    with open_store(store, create=True) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for path, record, run_digest, created in records:
                known = conn.execute("SELECT id FROM runs WHERE digest = ?", (run_digest,)).fetchone()
                run_id = int(known[0]) if known else _insert(conn, record, run_digest, created, path.name)
                added.append(Added(path, run_id, known is None, record.env_key, created, len(record.cases)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return added
