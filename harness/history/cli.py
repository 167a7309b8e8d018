"""`python -m harness history add | check | report`: keep every night's run, judge the series, draw the page."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.history.store import DEFAULT_STORE, STORE_ENV

if TYPE_CHECKING:
    from harness.gate.thresholds import Thresholds
    from harness.history.series import Run
    from harness.history.verdict import Verdict

STORE_HELP = f"the history file (SQLite); default: ${STORE_ENV} if set, else {DEFAULT_STORE}"


def add_history_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `history` command and its verbs to the CLI's subparsers; return its parser."""
    history = subparsers.add_parser(
        "history",
        help="keep every run in a SQLite history, find steps and drift, draw the trend page",
        description="Keep every run's results in a SQLite history (add), judge each case's metric over the runs "
        "(check: exit 1 on a newest run outside its window, a new step or drift; thresholds file 'history'), and "
        "write a self-contained HTML trend page (report).",
    )
    verbs = history.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="add results JSON to the history; a run already there is not added again")
    add.add_argument("results", type=Path, nargs="+", help="results JSON (run --out, gate --results-json)")
    check = verbs.add_parser("check", help="judge the newest runs; exit 1 on a regression, a new step or drift")
    report = verbs.add_parser("report", help="write the trend page (one HTML file, opens offline)")
    report.add_argument("--html", type=Path, required=True, help="the page to write, e.g. results/history.html")
    for verb in (add, check, report):
        verb.add_argument("--store", type=Path, default=None, help=STORE_HELP)
    for verb in (check, report):
        verb.add_argument("--thresholds", type=Path, default=None, help="(default: harness/gate/thresholds.json)")
    return history


def run_history(args: argparse.Namespace) -> int:
    """Run `history <verb>`; return the exit status (1: check found a regression). User errors raise HarnessError."""
    from harness import preflight
    from harness.history.store import store_path

    store = store_path(args.store)
    if args.verb == "add":
        for path in args.results:
            preflight.input_file(path, "results file", "give the results JSON a run wrote (--out or --results-json)")
        preflight.output_file(store, "--store", example="history.sqlite")
        return add_command(store, args.results)
    if args.thresholds is not None:
        preflight.input_file(
            args.thresholds, "--thresholds", "give a thresholds file, e.g. a copy of harness/gate/thresholds.json"
        )
    if args.verb == "check":
        return check_command(store, args.thresholds)
    preflight.output_file(args.html, "--html", example="history.html")
    return report_command(store, args.thresholds, args.html)


def add_command(store: Path, paths: list[Path]) -> int:
    """Add the results JSON `paths` to the history at `store`; print what each became; return 0."""
    from harness.history.ingest import add_runs

    start = time.perf_counter()
    added = add_runs(store, paths)
    for item in added:
        word = "added" if item.new else "already stored, not added again:"
        print(f"{word} {item.path} as run #{item.run_id} ({item.env_key}, {item.created}, {item.cases} cases)")
    new = sum(a.new for a in added)
    print(f"{store}: {new} new run(s), {len(added) - new} already there ({time.perf_counter() - start:.1f} s)",
          file=sys.stderr)
    return 0


def judge_store(store: Path, thresholds_path: Path | None) -> tuple[list[Verdict], list[Run], Thresholds]:
    """Return (verdicts, runs, thresholds) of every series in the store at `store`."""
    from harness.gate.thresholds import load_thresholds
    from harness.history.detect import judge
    from harness.history.series import read_runs, read_series
    from harness.history.store import open_store

    thresholds = load_thresholds(thresholds_path)
    with open_store(store) as conn:
        runs = list(read_runs(conn).values())
        series = read_series(conn, busy_limit=thresholds.timing.busy_limit)
    return [judge(s, thresholds) for s in series], runs, thresholds


def check_command(store: Path, thresholds_path: Path | None) -> int:
    """Judge every series of the history at `store`; print the failures; return 1 when any fails, else 0."""
    verdicts, runs, _ = judge_store(store, thresholds_path)
    judged = [v for v in verdicts if v.judged]
    short = len(verdicts) - len(judged)
    failed = [v for v in judged if v.failed]
    print(f"history {store}: {len(runs)} runs; judged {len(judged)} series"
          + (f" ({short} with too few runs yet)" if short else ""))
    for verdict in failed:
        key = verdict.series.key
        print(f"FAIL {key.case_id} {key.metric} [{key.env_key}]")
        for finding in verdict.findings:
            if finding.fails:
                print(f"  {finding.rule}: {finding.message}")
    for verdict in judged:
        for finding in verdict.findings:
            if finding.rule == "step" and not finding.fails:
                print(f"note {verdict.series.key.case_id} {verdict.series.key.metric}: {finding.message}")
    if failed:
        print(f"history check failed: {len(failed)} of {len(judged)} series")
        return 1
    print(f"history check passed: every judged series ({len(judged)}) is within its window, no new step, no drift")
    return 0


def report_command(store: Path, thresholds_path: Path | None, out: Path) -> int:
    """Write the trend page of the history at `store` to `out`; return 0."""
    from harness.history.page import Page, write_page

    start = time.perf_counter()
    verdicts, runs, thresholds = judge_store(store, thresholds_path)
    write_page(out, Page(verdicts, runs, store, thresholds))
    failed = sum(1 for v in verdicts if v.failed)
    print(f"wrote {out} ({len(runs)} runs, {len(verdicts)} series, {failed} failing) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
