"""The history store: where it is, and opening it safely (new: created; foreign: refused; old: migrated)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from harness.errors import HarnessError
from harness.history.schema import APPLICATION_ID, CREATE, MIGRATIONS, SCHEMA_VERSION
from harness.jsonio import migration_path

DEFAULT_STORE = Path("results/history.sqlite")
STORE_ENV = "HARNESS_HISTORY"
BUSY_SECONDS = 120.0
"""How long a writer waits for another one to finish (two nightly jobs adding at once take turns)."""
SQLITE_MAGIC = b"SQLite format 3\x00"


class HistoryError(HarnessError):
    """A history store that cannot be opened, read or written, or a run that cannot be added to it."""


def store_path(option: Path | None) -> Path:
    """Return the store to use: `option` (--store), else $HARNESS_HISTORY, else results/history.sqlite."""
    if option is not None:
        return Path(option).expanduser()
    env = os.environ.get(STORE_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_STORE


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before sqlite3 touches it (it would only fail at the first query)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise HistoryError(f"cannot read history store {path}: {exc}") from exc
    if head and head != SQLITE_MAGIC:
        raise HistoryError(
            f"history store {path} is not a SQLite database (it starts with {head[:8]!r}); give --store the file "
            "`history add` made, or a new path to start a history"
        )


def _prepare(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Check the file is a history store of a version this harness reads; create or migrate it (one transaction)."""
    app, version, tables = _identity(conn)
    if app == 0 and version == 0 and not tables:
        if not create:
            raise HistoryError(f"history store {path} is empty; add runs first: python -m harness history add RUN.json")
    elif app != APPLICATION_ID:
        raise HistoryError(
            f"{path} is a SQLite database of another application (application_id {app}, tables "
            f"{', '.join(sorted(tables)) or 'none'}), not a history store; give --store a history file or a new path"
        )
    elif version > SCHEMA_VERSION:
        raise HistoryError(
            f"history store {path} has schema version {version}, written by a newer harness (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade the harness"
        )
    elif version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        app, version, tables = _identity(conn)  # another process may have created or migrated it meanwhile
        if app == 0 and version == 0 and not tables:
            for statement in CREATE.split(";"):  # executescript would commit the transaction first
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            version = SCHEMA_VERSION
        missing = (f"history store {path} has schema version {{}} and there is no migration from it to "
                   f"{SCHEMA_VERSION}; start a new history (--store NEW) and add the results JSON again")
        for step in migration_path(version, SCHEMA_VERSION, MIGRATIONS, lambda v: HistoryError(missing.format(v))):
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _identity(conn: sqlite3.Connection) -> tuple[int, int, set[str]]:
    """Return (application_id, user_version, tables), read in one transaction: another process creating the store
    at the same moment is seen before or after, never half-way."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        if own:
            conn.execute("COMMIT")
    return int(app), int(version), tables


@contextlib.contextmanager
def open_store(path: Path, *, create: bool = False) -> Iterator[sqlite3.Connection]:
    """Yield a connection to the history store at `path` (created when `create`), checked and migrated.

    The connection is in autocommit mode: writers open their own `BEGIN IMMEDIATE` transaction. A missing store
    (unless `create`), a file that is not SQLite, another application's database or a newer schema raise
    HistoryError naming the path and the fix, and leave the file as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"history store {path} is a folder; give a file path, e.g. {path / 'history.sqlite'}")
    if not path.exists():
        if not create:
            raise HistoryError(
                f"no history store at {path}; start one with: python -m harness history add RESULTS.json "
                f"(--store or ${STORE_ENV} choose the file, default {DEFAULT_STORE})"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"cannot create the folder of history store {path}: {exc}") from exc
    else:
        _check_header(path)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open history store {path}: {exc}") from exc
    try:
        try:
            _prepare(conn, path, create=create)
            if create:
                conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer; kept in the file
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"history store {path} cannot be read ({exc}); it is damaged or not a history") from exc
        yield conn
    finally:
        conn.close()
