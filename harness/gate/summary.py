"""What the gate tells its reader: the end-of-run summary, and the extra record pytest-benchmark keeps per case."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from harness.gate.checks import FAIL, IMPROVED, INFO, LABELS, PASS, STALE, UNJUDGED
from harness.gate.store import UPDATE_HINT
from harness.results import METRICS, CaseResult

Row = Mapping[str, Any]
"""A check as the run record keeps it (checks.Check.to_dict)."""


def _line(row: Row) -> str:
    return f"{LABELS[str(row['outcome'])]} {row['case_id']} {row['metric']}: {row['message']}"


LISTED = 12
"""At most this many unjudged checks and notes are listed one by one in the summary; the rest are counted."""


def summary_lines(rows: Sequence[Row], *, baselines_dir: str, policy: str = "fail") -> list[tuple[str, bool]]:
    """Return the gate's summary as (line, is_warning) pairs: every planned check counted as passed, failed or
    UNJUDGED, what the unjudged policy made of the unjudged ones, each unjudged check and note with its reason,
    gains and stale baselines."""
    if not rows:
        return []
    outcomes = Counter(str(r["outcome"]) for r in rows)
    cases = len({r["case_id"] for r in rows})
    passed, failed, unjudged = outcomes[PASS] + outcomes[IMPROVED], outcomes[FAIL] + outcomes[STALE], outcomes[UNJUDGED]
    planned = passed + failed + unjudged
    extra = [f"{outcomes[k]} {k}" for k in (IMPROVED, STALE) if outcomes[k]]
    lines = [(
        f"{cases} cases, {planned} planned checks: {passed} passed, {failed} failed, {unjudged} UNJUDGED"
        + (f" ({', '.join(extra)})" if extra else "") + (f"; {outcomes[INFO]} notes" if outcomes[INFO] else ""),
        bool(unjudged),
    )]
    if unjudged:
        verdict = (
            "the run FAILS on them (--unjudged fail)" if policy == "fail"
            else "the run passes on what was judged (--unjudged warn): these checks say nothing"
        )
        lines.append((f"{unjudged} planned checks were not judged, and {verdict}:", True))
        lines += _listed([r for r in rows if r["outcome"] == UNJUDGED], baselines_dir)
    notes = [r for r in rows if r["outcome"] == INFO]
    if notes:
        lines.append((f"{len(notes)} notes (no check planned here):", False))
        lines += [(line, False) for line, _ in _listed(notes, baselines_dir)]
    lines += [(_line(r), True) for r in rows if r["outcome"] in (IMPROVED, STALE)]
    return lines


def _listed(rows: Sequence[Row], baselines_dir: str) -> list[tuple[str, bool]]:
    """Return one line per row (at most LISTED, then how many more); rows that only lack this environment's baseline
    are one line together."""
    no_baseline = sorted({str(r["case_id"]) for r in rows if str(r["message"]).startswith("no baseline for ")})
    rest = [r for r in rows if not str(r["message"]).startswith("no baseline for ")]
    lines = []
    if no_baseline:
        lines.append((f"  no baseline for this environment in {baselines_dir} ({len(no_baseline)} cases: every "
                      f"baseline check); record one with {UPDATE_HINT}", True))
    lines += [(f"  {_line(r)}", True) for r in rest[:LISTED]]
    if len(rest) > LISTED:
        lines.append((f"  ... and {len(rest) - LISTED} more (every check is in the run record, --results-json)", True))
    return lines


def extra_info(case: CaseResult, env_key: str, environment: Mapping[str, object]) -> dict[str, Any]:
    """Return what the pytest-benchmark JSON carries besides timing: every metric (results.METRICS, by name), and
    the case's latency summary, ratios with their intervals, contention, identity and coverage."""
    return {
        "case_id": case.case_id,
        "variant": case.variant,
        "device": case.device,
        "batch_size": case.batch_size,
        "metrics": {m.name: m.read(case) for m in METRICS if m.applies(case)},
        "params": case.params,
        "nonzero_params": case.nonzero_params,
        "latency_ms": case.latency_ms,
        "ratios": case.ratios,
        "contention": case.contention,
        "identity": case.identity,
        "coverage": case.coverage,
        "env_key": env_key,
        "environment": dict(environment),
    }
