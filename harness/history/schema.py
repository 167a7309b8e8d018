"""The history store's SQLite schema, its version (PRAGMA user_version) and the migrations between versions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2
APPLICATION_ID = 0x48495354
"""PRAGMA application_id of a history store ("HIST"): a SQLite file without it belongs to something else."""

CREATE = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    env_key TEXT NOT NULL,
    created TEXT NOT NULL,
    git_commit TEXT,
    command TEXT NOT NULL,
    data TEXT NOT NULL,
    model TEXT NOT NULL,
    environment TEXT NOT NULL,
    source TEXT NOT NULL,
    ingested TEXT NOT NULL
);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    case_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    device TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    status TEXT NOT NULL,
    contention REAL,
    identity TEXT NOT NULL,
    correct TEXT,
    UNIQUE (run_id, case_id)
);
CREATE TABLE measurements (
    case_row INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    low REAL,
    high REAL,
    log_se REAL,
    rounds INTEGER,
    PRIMARY KEY (case_row, metric)
) WITHOUT ROWID;
CREATE INDEX runs_by_env_and_date ON runs (env_key, created);
"""
"""The current schema. runs.digest is the SHA-256 of the run's identity (ingest.digest: what makes adding idempotent);
environment and identity are JSON text; correct is the per-image correctness as a string of 0s and 1s;
measurements hold every metric of a case, with low/high/log_se/rounds for the timing ratios."""


def _1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2 keeps the commit in its own column (version 1 had it only inside environment) and indexes the
    runs by environment and date, the order every series is read in."""
    conn.execute("ALTER TABLE runs ADD COLUMN git_commit TEXT")
    conn.execute("UPDATE runs SET git_commit = json_extract(environment, '$.git_commit')")
    conn.execute("CREATE INDEX runs_by_env_and_date ON runs (env_key, created)")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _1_to_2}
"""{from_version: step} turning a store of that version into one of the next, run inside one transaction."""
