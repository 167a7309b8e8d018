"""The gate's summary: every planned check counted as passed, failed or UNJUDGED, what the --unjudged policy made of
the unjudged ones, each listed with its reason; notes (no floor on this hardware) shown, never counted."""

from __future__ import annotations

from harness.gate.checks import Check
from harness.gate.summary import LISTED, summary_lines


def row(case: str, metric: str, outcome: str, message: str = "why") -> dict[str, object]:
    return Check(case, metric, outcome, None, None, None, "src", message).to_dict()


ROWS = [
    row("fp32-cpu-bs1", "top1_vs_fp32", "pass"),
    row("fp32-cpu-bs1", "latency_vs_yardstick", "unjudged", "not judged: the machine was busy: others held ..."),
    row("bf16-cpu-bs32", "speedup_floor", "info", "no floor: this CPU has no bf16 instructions"),
    row("bf16-cpu-bs32", "speedup_vs_fp32", "improved", "faster than the baseline"),
    row("bf16-cpu-bs32", "size_bytes", "stale", "better than the baseline"),
    row("bf16-cpu-bs32", "top1", "fail", "worse than the baseline"),
]


def test_the_first_line_counts_every_planned_check() -> None:
    (first, warn), *_ = summary_lines(ROWS, baselines_dir="baselines")
    assert first == "2 cases, 5 planned checks: 2 passed, 2 failed, 1 UNJUDGED (1 improved, 1 stale); 1 notes"
    assert warn


def test_the_policy_says_what_the_unjudged_checks_did_to_the_run() -> None:
    failing = [line for line, _ in summary_lines(ROWS, baselines_dir="b", policy="fail")]
    assert "1 planned checks were not judged, and the run FAILS on them (--unjudged fail):" in failing
    assert any(line.startswith("  UNJUDGED fp32-cpu-bs1 latency_vs_yardstick: not judged: the machine was busy")
               for line in failing)
    warned = [line for line, _ in summary_lines(ROWS, baselines_dir="b", policy="warn")]
    assert any("the run passes on what was judged (--unjudged warn)" in line for line in warned)
    assert "  INFO bf16-cpu-bs32 speedup_floor: no floor: this CPU has no bf16 instructions" in warned


def test_a_missing_baseline_is_one_line_and_a_long_list_is_cut() -> None:
    rows = [row(f"v{i}-cpu-bs1", m, "unjudged", "no baseline for KEY in b; record one with nox")
            for i in range(5) for m in ("top1", "size_bytes")]
    rows += [row(f"w{i}-cpu-bs1", "speedup_floor", "unjudged", "not judged: busy") for i in range(LISTED + 3)]
    lines = [line for line, _ in summary_lines(rows, baselines_dir="b")]
    assert sum("no baseline for this environment in b (5 cases: every baseline check)" in line for line in lines) == 1
    assert "  ... and 3 more (every check is in the run record, --results-json)" in lines
