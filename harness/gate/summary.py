"""What the gate tells its reader: the end-of-run summary, and the extra record pytest-benchmark keeps per case."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from harness.gate.checks import LABELS
from harness.gate.store import UPDATE_HINT
from harness.results import METRICS, CaseResult

Row = Mapping[str, Any]
"""A check as the run record keeps it (checks.Check.to_dict)."""


def _line(row: Row) -> str:
    return f"{LABELS[str(row['outcome'])]} {row['case_id']} {row['metric']}: {row['message']}"


def summary_lines(rows: Sequence[Row], *, baselines_dir: str) -> list[tuple[str, bool]]:
    """Return the gate's summary as (line, is_warning) pairs: counts, what was not judged and why, gains."""
    if not rows:
        return []
    outcomes = Counter(str(r["outcome"]) for r in rows)
    cases = len({r["case_id"] for r in rows})
    lines = [(f"{cases} cases judged; checks: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())), False)]
    no_baseline = sorted({str(r["case_id"]) for r in rows if r["metric"] == "baseline" and r["source"] == "none"})
    if no_baseline:
        lines.append((
            f"baseline checks SKIPPED for {len(no_baseline)} cases (accuracy against fp32 and the speedup floors "
            f"still ran): no baseline for this environment in {baselines_dir}; create one with {UPDATE_HINT}",
            True,
        ))
    unjudged = [r for r in rows if r["outcome"] == "skip" and str(r["message"]).startswith("not judged")]
    if unjudged:
        reasons = Counter(str(r["message"]).split(";")[0] for r in unjudged)
        for reason, n in reasons.most_common(3):
            lines.append((f"timing of {n} checks {reason}", True))
    lines += [(_line(r), True) for r in rows if r["outcome"] in ("improved", "stale")]
    refused = [r for r in rows if r["metric"] == "top1" and str(r["message"]).startswith("refused")]
    if refused:
        lines.append((f"accuracy against the baseline refused for {len(refused)} cases: {refused[0]['message']}", True))
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
