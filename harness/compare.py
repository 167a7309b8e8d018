"""Two results files side by side: the new run judged by the gate's checks against the old run as a baseline.

The old run becomes a one-run baseline (harness.gate.store.entries_of), so every metric is judged exactly as the
gate judges it: sizes exactly, accuracy by the paired test when the model and images are the same, timing ratios
against the thresholds file's prior spread (one run says nothing about its own spread) with Holm's procedure over
the comparison's timing checks. A comparison cannot re-measure, so a timing regression here is not confirmed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.gate.checks import Check, TimingTest, baseline_checks
from harness.gate.spreads import SpreadModel
from harness.gate.store import BaselineEntry, entries_of
from harness.gate.thresholds import Thresholds, load_thresholds
from harness.jsonio import write_atomic
from harness.metrics import Metric
from harness.results import METRICS, CaseResult, RunRecord, load_run
from harness.timing_stats import HolmFamily

COMPARED = tuple(sorted((m for m in METRICS if m.compared), key=lambda m: m.judged is None))
"""The metrics `compare` shows: the judged ones, then those shown but not judged (the latency)."""


@dataclass(frozen=True)
class CaseDelta:
    """One case id across the two runs; presence: "both", "old only" or "new only"."""

    case_id: str
    presence: str
    checks: tuple[Check, ...] = ()
    old: CaseResult | None = None
    new: CaseResult | None = None
    note: str = ""
    status_regression: bool = False

    @property
    def verdict(self) -> str:
        """Return "regression", "improvement", "same", "old only", "new only" or "not compared"."""
        if self.presence != "both":
            return self.presence
        outcomes = {c.outcome for c in self.checks}
        if self.status_regression or "fail" in outcomes:
            return "regression"
        if outcomes & {"stale", "improved"}:
            return "improvement"
        return "same" if self.checks else "not compared"

    def findings(self, kind: str) -> list[str]:
        """Return one line per check (or status change) of this case with verdict `kind`."""
        wanted = {"regression": ("fail",), "improvement": ("stale", "improved")}.get(kind, ())
        lines = [f"{self.case_id} {c.metric}: {c.message}" for c in self.checks if c.outcome in wanted]
        if kind == "regression" and self.status_regression:
            lines.insert(0, f"{self.case_id}: {self.note}")
        return lines


def _judge_timing(tests: list[TimingTest], thresholds: Thresholds) -> dict[str, Check]:
    """Return a Check per timing test: Holm over all of them, no confirmation (nothing can be re-measured)."""
    if not tests:
        return {}
    family = HolmFamily(len(tests), thresholds.timing.family_alpha)
    verdicts = {}
    for test in sorted(tests, key=lambda t: t.shift.p_worse):
        rejected, threshold = family.judge(test.key, test.shift.p_worse)
        base = Check(test.case_id, test.metric, "pass", test.value, test.limit, test.reference, test.source,
                     test.describe(), p_value=test.shift.p_worse)
        if rejected and test.beyond_tolerance:
            base = replace(base, outcome="fail", message=f"{test.describe()}; beyond the Holm threshold "
                           f"{threshold:.2g} of this comparison (one run each: not confirmed by a re-measurement)")
        elif -test.shift.worse > math.log1p(test.tolerance) and test.shift.p_better <= family.alpha / family.size:
            base = replace(base, outcome="improved", message=f"faster: {test.describe()}")
        verdicts[test.key] = base
    return verdicts


def compare_runs(
    old: RunRecord, new: RunRecord, thresholds: Thresholds, *, source: str = "the old run"
) -> list[CaseDelta]:
    """Return one CaseDelta per case id in either run: old's order, then the cases only in new."""
    entries: dict[str, BaselineEntry] = {}
    for device in {c.device for c in old.cases}:
        entries.update(entries_of([old], device))
    new_cases, old_cases = {c.case_id: c for c in new.cases}, {c.case_id: c for c in old.cases}
    judged: dict[str, list[Check | TimingTest]] = {}
    spreads = SpreadModel.of(entries, thresholds)
    for cid, case in new_cases.items():
        before = old_cases.get(cid)
        if before is not None and before.status == "ok" and case.status == "ok" and cid in entries:
            judged[cid] = baseline_checks(case, entries[cid], thresholds, source, spreads)
    timing = _judge_timing([i for items in judged.values() for i in items if isinstance(i, TimingTest)], thresholds)
    deltas = []
    for cid, before in old_cases.items():
        after = new_cases.get(cid)
        if after is None:
            deltas.append(CaseDelta(cid, "old only", old=before, note="not in the new run"))
        elif cid in judged:
            checks = tuple(timing[i.key] if isinstance(i, TimingTest) else i for i in judged[cid])
            deltas.append(CaseDelta(cid, "both", checks, before, after))
        elif before.status == "ok":
            note = f"measured before, now {after.status}: {after.reason or 'no reason'}"
            deltas.append(CaseDelta(cid, "both", (), before, after, note, status_regression=True))
        else:
            deltas.append(CaseDelta(cid, "both", (), before, after, f"not compared: {before.status} before, "
                                    f"{after.status} now"))
    deltas += [CaseDelta(c.case_id, "new only", new=c, note="not in the old run")
               for c in new.cases if c.case_id not in old_cases]
    return deltas


def count(deltas: Sequence[CaseDelta], kind: str) -> int:
    """Return how many findings (checks and status changes) of `kind` the deltas hold."""
    return sum(len(d.findings(kind)) for d in deltas)


def summary_line(deltas: Sequence[CaseDelta]) -> str:
    """Return "N regressions, M improvements" with how many cases were compared."""
    regressions, improvements = count(deltas, "regression"), count(deltas, "improvement")
    both = sum(d.presence == "both" for d in deltas)
    only = [f"{sum(d.presence == p for d in deltas)} {p}" for p in ("old only", "new only")]
    return (
        f"{regressions} regression{'s' * (regressions != 1)}, {improvements} improvement"
        f"{'s' * (improvements != 1)} in {both} cases in both runs ({', '.join(only)})"
    )


def _cell(delta: CaseDelta, metric: Metric, marks: dict[str, str]) -> str:
    old = metric.read(delta.old) if delta.old else None
    new = metric.read(delta.new) if delta.new else None
    if new is None:
        return "-"
    change = metric.change(old, new)
    outcome = next((c.outcome for c in delta.checks if c.metric == metric.name), "")
    return metric.format(new) + (f" ({change})" if change else "") + marks.get(outcome, "")


def _rows(deltas: Sequence[CaseDelta], marks: dict[str, str]) -> list[list[str]]:
    return [[d.case_id, d.verdict, *(_cell(d, m, marks) for m in COMPARED)] for d in deltas]


def _header() -> list[str]:
    return ["case", "verdict", *(m.heading if m.judged else f"{m.heading} (not judged)" for m in COMPARED)]


def _sections(deltas: Sequence[CaseDelta]) -> list[tuple[str, list[str]]]:
    """Return (title, lines) for the regressions, improvements and cases not compared, if any."""
    sections = [
        ("Regressions", [line for d in deltas for line in d.findings("regression")]),
        ("Improvements", [line for d in deltas for line in d.findings("improvement")]),
        ("Not compared", [f"{d.case_id}: {d.note}" for d in deltas if d.note and not d.status_regression]),
    ]
    return [(title, lines) for title, lines in sections if lines]


def format_text(deltas: Sequence[CaseDelta]) -> str:
    """Return the comparison as an aligned text table ('!' regression, '^' improvement) and the findings."""
    rows = _rows(deltas, {"fail": " !", "stale": " ^", "improved": " ^"})
    header = _header()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, ["-" * w for w in widths], *rows]
    ]
    lines += ["", summary_line(deltas)]
    for title, found in _sections(deltas):
        lines += [f"{title}:", *(f"  {line}" for line in found)]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(deltas: Sequence[CaseDelta], old_path: Path, new_path: Path, *, warning: str | None = None) -> str:
    """Return the comparison for a PR comment: heading, summary line, table, then each finding."""
    lines = ["## Benchmark comparison", "", f"`{old_path}` → `{new_path}`", ""]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    header = _header()
    lines += [f"**{summary_line(deltas)}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _rows(deltas, {"fail": " 🔴", "stale": " 🟢", "improved": " 🟢"}):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    for title, found in _sections(deltas):
        lines += ["", f"### {title}", *(f"- {line}" for line in found)]
    return "\n".join(lines) + "\n"


def environment_warning(old: RunRecord, new: RunRecord) -> str | None:
    """Return a warning when the runs differ in environment, data or model, else None."""
    problems = []
    if old.env_key != new.env_key:
        problems.append(
            f"the hardware/versions differ (env_key {old.env_key} vs {new.env_key}), so timing changes may not be "
            "the code's"
        )
    if (old.data, old.model) != (new.data, new.model):
        problems.append(
            f"the data/model differ ({old.data}, {old.model} vs {new.data}, {new.model}), so accuracy changes are "
            "not comparable"
        )
    return "; ".join(problems) or None


def compare_command(old: Path, new: Path, *, markdown: Path | None, thresholds: Path | None) -> int:
    """Print the comparison of two results files, write it as markdown if asked; return 1 on a regression.

    Returns 0 when no check failed and no case measured before fails now; cases in only one run are listed, never
    fatal. Unreadable results or thresholds files raise ResultsError (the CLI exits 2 with its message).
    """
    old_run, new_run = load_run(old), load_run(new)
    deltas = compare_runs(old_run, new_run, load_thresholds(thresholds), source=str(old))
    warning = environment_warning(old_run, new_run)
    if warning:
        print(f"warning: {warning}")
    print(format_text(deltas))
    if markdown is not None:
        text = format_markdown(deltas, old, new, warning=warning)
        write_atomic(markdown, lambda handle: handle.write(text.encode("utf-8")))
        print(f"wrote {markdown}", file=sys.stderr)
    return 1 if count(deltas, "regression") else 0
