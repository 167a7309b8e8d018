"""Tests of harness.compare: deltas, verdicts, text and markdown output, exit status; on synthetic runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_baselines import make_case, with_wrong

from harness.__main__ import main
from harness.baselines import load_thresholds
from harness.compare import compare_command, compare_runs, format_markdown, format_text, summary_line
from harness.errors import ResultsError
from harness.results import CaseResult, RunRecord, save_run

ENV = "cpu-test-2t-torch2.14"


def timed_case(
    variant: str,
    median: float,
    *,
    spread: float = 0.01,
    seed: int = 0,
    speedup: float | None = 3.5,
    correct: list[bool] | None = None,
) -> CaseResult:
    """Return a case whose 60 latency samples scatter around `median` with relative spread `spread`."""
    samples = list(median * (1 + spread * np.random.default_rng(seed).standard_normal(60)))
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    return make_case(
        variant, median=float(q50), iqr=float(q75 - q25), samples=samples, speedup=speedup, correct=correct
    )


def make_run(cases: list[CaseResult], env_key: str = ENV) -> RunRecord:
    return RunRecord(
        environment={"torch": "2.14.1", "cpu_model": "test cpu"},
        env_key=env_key,
        cases=cases,
        created="2026-11-28T00:00:00+00:00",
        command="python -m harness run",
        data="digits",
        model="resnet18 (trained)",
    )


def baseline_cases() -> list[CaseResult]:
    return [timed_case("fp32", 30.0, speedup=None), timed_case("static_int8", 10.0, seed=1)]


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


def test_planted_latency_regression_exits_1_and_writes_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = saved(tmp_path, "old.json", make_run(baseline_cases()))
    slower = [baseline_cases()[0], timed_case("static_int8", 11.5, seed=2)]  # +15%, 1% spread
    new = saved(tmp_path, "new.json", make_run(slower))
    md = tmp_path / "out" / "compare.md"
    assert compare_command(old, new, markdown=md, thresholds=None) == 1
    out = capsys.readouterr().out
    assert "static_int8-cpu-bs1 latency_median_ms" in out and "Regressions:" in out
    text = md.read_text(encoding="utf-8")
    assert text.startswith("## Benchmark comparison\n")
    assert "**2 regressions, 0 improvements" in text  # latency and throughput
    assert "| case | verdict | top-1 | latency ms |" in text
    assert "| static_int8-cpu-bs1 | regression |" in text and "### Regressions" in text
    assert str(old) in text and str(new) in text


def test_latency_change_inside_the_noise_is_not_a_regression() -> None:
    thresholds = load_thresholds()
    noisy_old = [timed_case("static_int8", 10.0, spread=0.2, seed=3)]
    noisy_new = [timed_case("static_int8", 11.5, spread=0.2, seed=4)]
    (delta,) = compare_runs(make_run(noisy_old), make_run(noisy_new), thresholds)
    assert delta.verdict == "same", format_text([delta])


def test_significance_from_the_samples_is_reported() -> None:
    thresholds = load_thresholds()
    (delta,) = compare_runs(
        make_run([timed_case("static_int8", 10.0)]),
        make_run([timed_case("static_int8", 11.5, seed=5)]),
        thresholds,
    )
    latency = {m.metric: m for m in delta.metrics}["latency_median_ms"]
    assert latency.verdict == "regression" and latency.significant is True
    assert latency.relative == pytest.approx(0.15, abs=0.02) and "95% interval" in latency.detail


def test_paired_accuracy_regression_and_improvement() -> None:
    thresholds = load_thresholds()
    good, bad = make_case(), make_case(correct=with_wrong(30))
    (worse,) = compare_runs(make_run([good]), make_run([bad]), thresholds)
    top1 = {m.metric: m for m in worse.metrics}["top1"]
    assert top1.verdict == "regression" and top1.significant is True and "paired test" in top1.detail
    (better,) = compare_runs(make_run([bad]), make_run([good]), thresholds)
    assert better.verdict == "improvement"


def test_cases_only_in_one_run_and_status_changes_are_listed() -> None:
    thresholds = load_thresholds()
    old = make_run([make_case("fp32", speedup=None), make_case(), make_case("bf16")])
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
