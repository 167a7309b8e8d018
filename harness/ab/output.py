"""What `ab` shows and keeps: the table on the terminal, markdown for a pull-request comment, the results JSON."""

from __future__ import annotations

from typing import Any

from harness.ab.judge import REGRESSION, UNJUDGED
from harness.ab.runner import CaseOutcome, Comparison
from harness.metrics import MB

SCHEMA = "harness-ab"
SCHEMA_VERSION = 1
HEADER = ("case", "base ms", "head ms", "latency head/base (95%)", "top-1 base → head (Δ, 95%)", "size MB", "verdict")


def latency_text(case: CaseOutcome, process_sd: float) -> str:
    """Return the latency change with its 95% interval (the rounds' and the two processes' spread), and again."""
    if case.latency is None:
        return "-"
    parts = []
    for label, change in (("", case.latency), ("again ", case.latency_again)):
        if change is not None:
            low, high = change.interval(process_sd)
            parts.append(f"{label}{change.change:+.1%} ({low - 1:+.1%} to {high - 1:+.1%})")
    return "; ".join(parts)


def _accuracy(case: CaseOutcome) -> str:
    a = case.accuracy
    if a is None:
        return "-"
    return f"{a.base:.2%} → {a.head:.2%} ({a.change * 100:+.1f} pts, {a.low * 100:+.1f} to {a.high * 100:+.1f})"


def _size(case: CaseOutcome) -> str:
    if case.base is None or case.head is None or case.base.get("size_bytes") is None:
        return "-"
    base, head = case.base["size_bytes"] / MB, (case.head.get("size_bytes") or 0) / MB
    return f"{base:.2f}" if base == head else f"{base:.2f} → {head:.2f}"


def _verdict(case: CaseOutcome) -> str:
    if case.regressions:
        return f"REGRESSION ({', '.join(case.regressions)})"
    if case.status != "ok":
        return f"{case.status}: {case.reason}"
    if case.verdict == UNJUDGED:
        return f"UNJUDGED: {case.unjudged_reason}"
    return case.verdict + (f" ({', '.join(case.improvements)})" if case.improvements else "")


def rows(comparison: Comparison) -> list[list[str]]:
    """Return one row of cells per case."""
    return [
        [
            case.case_id,
            "-" if case.latency is None else f"{case.latency.base_ms:.3f}",
            "-" if case.latency is None else f"{case.latency.head_ms:.3f}",
            latency_text(case, comparison.settings.rule.process_sd),
            _accuracy(case),
            _size(case),
            _verdict(case),
        ]
        for case in comparison.cases
    ]


def summary(comparison: Comparison) -> str:
    """Return the one-line verdict (unjudged cases counted, with what the --unjudged policy made of them)."""
    bad, unjudged = comparison.regressions, comparison.unjudged
    head, base = comparison.head.label, comparison.base.label
    found = f"{len(bad)} regression(s)" if bad else "no regression"
    if unjudged:
        policy = comparison.settings.unjudged
        found += (f", {len(unjudged)} UNJUDGED ({'the run fails on them' if policy == 'fail' else 'warned'}: "
                  f"--unjudged {policy})")
    return f"ab: {found} in {len(comparison.cases)} cases: head {head} against base {base}"


def text(comparison: Comparison) -> str:
    """Return the aligned table and the summary line."""
    table = [list(HEADER), *rows(comparison)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in table]
    return "\n".join([*lines, summary(comparison)])


def markdown(comparison: Comparison) -> str:
    """Return the comparison as markdown for a pull-request comment."""
    s = comparison.settings
    lines = [
        f"### {summary(comparison)}",
        "",
        f"Model `{s.model}` on `{s.data}`, {s.device}, {s.threads} threads, measured on one machine in one job "
        f"({comparison.seconds:.0f} s): base and head in two worker processes, timed in interleaved rounds, "
        "evaluated on the same images.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join("---" for _ in HEADER) + " |",
    ]
    for row in rows(comparison):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    lines += [
        "",
        f"Latency is head's over base's, each normalized by a fixed yardstick network timed in the same burst (its "
        f"cost matched to the model's); the interval holds the rounds' noise and the two processes' own spread. A "
        f"slowdown fails when it is beyond {s.thresholds.ab.tolerance:.0%}, significant, and confirmed by a second "
        "measurement in fresh workers. Top-1 is judged by the paired test on the same images.",
    ]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> dict[str, Any]:
    """Return the results JSON object."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "verdict": REGRESSION if comparison.regressions else UNJUDGED if comparison.failed else "pass",
        "base": comparison.base.to_dict(),
        "head": comparison.head.to_dict(),
        "models": comparison.models,
        "settings": comparison.settings.to_dict(),
        "environment": comparison.environment,
        "seconds": comparison.seconds,
        "cases": [case.to_dict() for case in comparison.cases],
    }
