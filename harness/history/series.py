"""The store read back as series: one per environment, data, model, case and judged metric, oldest run first."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from harness.gate.metrics import METRICS, Metric


@dataclass(frozen=True)
class Run:
    """One stored run: its row id, environment key, date (ISO, UTC), commit and the file it came from."""

    id: int
    env_key: str
    created: str
    commit: str | None
    source: str
    dirty: bool | None

    @property
    def label(self) -> str:
        """Return "run #12 (2026-11-29 07:16, bb623fc)": id, date, time and short commit ("dirty" if the tree was)."""
        commit = (self.commit or "no commit")[:7] + (" dirty" if self.dirty else "")
        return f"run #{self.id} ({self.created[:10]} {self.created[11:16]}, {commit})"


@dataclass(frozen=True)
class Point:
    """One run's value of a series, with its spread (timing ratios) and per-image correctness (top1)."""

    run: Run
    value: float
    low: float | None = None
    high: float | None = None
    log_se: float | None = None
    correct: str | None = None
    identity: str | None = None


@dataclass(frozen=True)
class SeriesKey:
    """What makes runs comparable: the same environment, data, model and case, and the metric."""

    env_key: str
    data: str
    model: str
    case_id: str
    metric: str

    @property
    def anchor(self) -> str:
        """Return an HTML id for the series' chart."""
        text = f"{self.env_key}--{self.case_id}--{self.metric}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass
class Series:
    """A case's metric over the runs of one environment, oldest first; `busy` counts runs left out as busy."""

    key: SeriesKey
    metric: Metric
    device: str
    batch_size: int
    points: list[Point] = field(default_factory=list)
    busy: int = 0


def read_runs(conn: sqlite3.Connection) -> dict[int, Run]:
    """Return every stored run by row id."""
    rows = conn.execute(
        "SELECT id, env_key, created, git_commit, source, json_extract(environment, '$.git_dirty') FROM runs"
    )
    return {
        row[0]: Run(row[0], row[1], row[2], row[3], row[4], None if row[5] is None else bool(row[5])) for row in rows
    }


def read_series(conn: sqlite3.Connection, *, busy_limit: float) -> list[Series]:
    """Return every judged metric's series, oldest run first (ties by the order they were added).

    Only cases that ran ("ok") count. A timing value measured while other processes took more than `busy_limit` of
    the CPU is left out (the gate does not judge it either) and counted in `busy`.
    """
    runs = read_runs(conn)
    metrics = {m.name: m for m in METRICS}
    marks = ", ".join("?" for _ in metrics)
    rows = conn.execute(
        "SELECT r.id, r.data, r.model, c.case_id, c.device, c.batch_size, c.contention, m.metric, m.value, m.low, "
        "m.high, m.log_se, CASE WHEN m.metric = 'top1' THEN c.correct END, "
        "CASE WHEN m.metric = 'top1' THEN c.identity END "
        "FROM measurements m JOIN cases c ON c.id = m.case_row JOIN runs r ON r.id = c.run_id "
        f"WHERE c.status = 'ok' AND m.metric IN ({marks}) "
        "ORDER BY r.env_key, r.data, r.model, c.case_id, m.metric, r.created, r.id",
        tuple(metrics),
    )
    out: list[Series] = []
    current: Series | None = None
    last: tuple[object, ...] = ()
    busy = busy_limit
    for run_id, data, model, case_id, device, batch, contention, name, value, low, high, log_se, correct, ident in rows:
        run = runs[run_id]
        here = (run.env_key, data, model, case_id, name)
        if current is None or here != last:  # rows come grouped by series: a new key starts the next one
            current = Series(SeriesKey(*here), metrics[name], device, int(batch))
            out.append(current)
            last = here
        if contention is not None and contention > busy and current.metric.judged == "timing":
            current.busy += 1
            continue
        current.points.append(Point(run, value, low, high, log_se, correct, ident))
    return [s for s in out if s.points]
