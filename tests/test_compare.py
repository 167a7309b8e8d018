"""Tests of harness.compare: the new run judged against the old as a one-run baseline; text, markdown, exit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _gate import make_case, make_run, with_wrong

from harness.__main__ import main
from harness.compare import compare_command, compare_runs, format_markdown, format_text, summary_line
from harness.errors import ResultsError
from harness.gate.thresholds import load_thresholds
from harness.results import CaseResult, RunRecord, save_run


def baseline_cases() -> list[CaseResult]:
    return [make_case("fp32"), make_case("static_int8", speedup=3.5)]


def saved(tmp_path: Path, name: str, run: RunRecord) -> Path:
    path = tmp_path / name
    save_run(path, run)
    return path


def test_identical_runs_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = saved(tmp_path, "old.json", make_run(baseline_cases()))
    new = saved(tmp_path, "new.json", make_run(baseline_cases()))
    assert compare_command(old, new, markdown=None, thresholds=None) == 0
    out = capsys.readouterr().out
    assert "0 regressions, 0 improvements in 2 cases in both runs" in out and "warning" not in out


def test_a_large_slowdown_exits_1_and_writes_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = saved(tmp_path, "old.json", make_run(baseline_cases()))
    new = saved(tmp_path, "new.json", make_run([make_case("fp32"), make_case("static_int8", speedup=2.45)]))
    md = tmp_path / "out" / "compare.md"
    assert compare_command(old, new, markdown=md, thresholds=None) == 1
    out = capsys.readouterr().out
    assert "static_int8-cpu-bs1 speedup_vs_fp32" in out and "Regressions:" in out and "not confirmed" in out
    text = md.read_text(encoding="utf-8")
    assert text.startswith("## Benchmark comparison\n") and "**1 regression, 0 improvements" in text
    assert "| case | verdict | top-1 | size MB |" in text and "latency ms (not judged)" in text
    assert "| static_int8-cpu-bs1 | regression |" in text and "### Regressions" in text
    assert str(old) in text and str(new) in text


def test_a_model_slowdown_shows_in_fp32_against_the_yardstick() -> None:
    (fp32, _) = compare_runs(make_run(baseline_cases()),
                             make_run([make_case("fp32", latency_ratio=1.4), baseline_cases()[1]]), load_thresholds())
    assert fp32.verdict == "regression" and "latency_vs_yardstick" in fp32.findings("regression")[0]


def test_a_change_one_run_cannot_tell_from_noise_is_not_a_regression() -> None:
    (_, delta) = compare_runs(make_run(baseline_cases()),
                              make_run([make_case("fp32"), make_case("static_int8", speedup=3.3)]), load_thresholds())
    assert delta.verdict == "same", format_text([delta])


def test_absolute_latency_is_shown_but_never_judged() -> None:
    (_, delta) = compare_runs(make_run(baseline_cases()),
                              make_run([make_case("fp32"), make_case("static_int8", median=20.0)]), load_thresholds())
    assert delta.verdict == "same" and "20.00 (+100.0%)" in format_text([delta])


def test_paired_accuracy_regression_and_improvement() -> None:
    thresholds = load_thresholds()
    good, bad = make_case(), make_case(correct=with_wrong(30))
    (worse,) = compare_runs(make_run([good]), make_run([bad]), thresholds)
    top1 = {c.metric: c for c in worse.checks}["top1"]
    assert top1.outcome == "fail" and worse.verdict == "regression" and "paired test" in top1.message
    (better,) = compare_runs(make_run([bad]), make_run([good]), thresholds)
    assert better.verdict == "improvement"


def test_cases_only_in_one_run_and_status_changes_are_listed() -> None:
    thresholds = load_thresholds()
    old = make_run([make_case("fp32"), make_case(), make_case("bf16")])
    broken = dataclasses.replace(make_case("bf16"), status="error", reason="kernel missing")
    new = make_run([make_case(), broken, make_case("compile")])
    deltas = {d.case_id: d for d in compare_runs(old, new, thresholds)}
    assert deltas["fp32-cpu-bs1"].verdict == "old only"
    assert deltas["compile-cpu-bs1"].verdict == "new only"
    assert deltas["bf16-cpu-bs1"].verdict == "regression" and "kernel missing" in deltas["bf16-cpu-bs1"].note
    summary = summary_line(list(deltas.values()))
    assert summary.startswith("1 regression, 0 improvements in 2 cases in both runs (1 old only, 1 new only)")
    text = format_text(list(deltas.values()))
    assert "Not compared:" in text and "fp32-cpu-bs1: not in the new run" in text
    markdown = format_markdown(list(deltas.values()), Path("a.json"), Path("b.json"))
    assert "### Not compared" in markdown and "`a.json` → `b.json`" in markdown


def test_different_environments_are_compared_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = saved(tmp_path, "old.json", make_run(baseline_cases()))
    new = saved(tmp_path, "new.json", make_run(baseline_cases(), env_key="cuda-h200-torch2.14-cu13.0"))
    md = tmp_path / "c.md"
    assert compare_command(old, new, markdown=md, thresholds=None) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("warning: the hardware/versions differ") and "cuda-h200" in first
    assert "> **Warning:** the hardware/versions differ" in md.read_text(encoding="utf-8")


def test_unreadable_files_raise_and_the_cli_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = saved(tmp_path, "good.json", make_run(baseline_cases()))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ResultsError, match="truncated or not JSON"):
        compare_command(good, bad, markdown=None, thresholds=None)
    with pytest.raises(ResultsError, match="does not exist"):
        compare_command(good, tmp_path / "missing.json", markdown=None, thresholds=None)
    assert main(["compare", str(good), str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["compare", str(good), str(good), "--thresholds", str(bad)]) == 2
