"""The Gate's judging on synthetic measurements: Holm over the run, confirmation, and when timing is not judged."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from _gate import ENVIRONMENT, IDENTITY, TIGHT_RUNS, make_case, stored
from _gate import gate_settings as settings

from harness.errors import HarnessError
from harness.gate.checks import Check
from harness.gate.runner import Gate, Measured
from harness.results import CaseResult


class FakeGate(Gate):
    """A Gate whose fingerprint, fp32 reference and re-measurements are chosen by the test."""

    retimed: list[tuple[float, float | None]]

    def reference(self, case: CaseResult, device: torch.device) -> CaseResult:
        return make_case("fp32", batch_size=case.batch_size)

    def retime(self, measured: Measured) -> tuple[dict[str, dict[str, float]], float | None]:
        if not self.retimed:
            raise HarnessError("no more re-measurements queued by the test")
        value, contention = self.retimed.pop(0)
        again = make_case(measured.result.variant, speedup=value, latency_ratio=value)
        return again.ratios, contention


def gate_for(tmp_path: Path, retimed: list[tuple[float, float | None]] | None = None, **changes: Any) -> FakeGate:
    gate = FakeGate(settings(tmp_path, **changes))
    gate._environment = dict(ENVIRONMENT)
    gate.retimed = list(retimed or [])
    return gate


def judged(gate: Gate, case: CaseResult) -> dict[str, Check]:
    return {c.metric: c for c in gate.judge(Measured(case, None, torch.device("cpu")))}  # type: ignore[arg-type]


@pytest.fixture
def baseline_dir(tmp_path: Path) -> Path:
    """A baseline of five tight runs of static_int8 (about 3.5x) and fp32 (1.0 against the yardstick)."""
    folder = tmp_path / "baselines"
    stored(folder, *[[make_case("fp32", latency_ratio=1.0 + d / 100), make_case(speedup=s)]
                     for d, s in zip((0, 1, -1, 0.5, -0.5), TIGHT_RUNS, strict=True)])
    return folder


def test_a_confirmed_slowdown_fails_and_keeps_both_measurements(baseline_dir: Path) -> None:
    gate = gate_for(baseline_dir, retimed=[(3.0, 0.0)])
    case = make_case(speedup=2.95)
    checks = judged(gate, case)
    speedup = checks["speedup_vs_fp32"]
    assert speedup.outcome == "fail" and speedup.failed
    assert "re-measured in 1 fresh processes: 3" in speedup.message and "Holm threshold" in speedup.message
    assert "confirmed" in speedup.message  # decided at the first look: no more processes started
    assert case.confirmation is not None and case.confirmation["looks"] == 1
    assert case.confirmation["measurements"][0]["ratios"]["speedup_vs_fp32"]["value"] == 3.0
    assert gate.cases["static_int8-cpu-bs1"].checks  # the verdicts are in the run's record
    # the verdict is on both runs: their geometric mean, and the pooled p-value is what Holm saw
    assert speedup.line().startswith("REGRESSION static_int8-cpu-bs1 speedup_vs_fp32: measured 2.97")
    assert speedup.p_value == gate.family.p_values["static_int8-cpu-bs1:speedup_vs_fp32"]


def test_a_slowdown_the_re_measurement_does_not_confirm_passes(baseline_dir: Path) -> None:
    # 2.95 then 3.49: together 8% worse, more than half the tolerance: one more look; then 3.5: 5.8%; then 3.5: 4.3%,
    # no longer worse than half the 10% tolerance: it passes, after three fresh processes
    gate = gate_for(baseline_dir, retimed=[(3.49, 0.0), (3.5, 0.0), (3.5, 0.0), (3.5, 0.0)])
    case = make_case(speedup=2.95)
    check = judged(gate, case)["speedup_vs_fp32"]
    assert check.outcome == "pass" and "not confirmed" in check.message and "machine noise" in check.message
    assert case.confirmation is not None and case.confirmation["looks"] == 3 and len(gate.retimed) == 1


def test_a_re_measurement_that_alone_is_not_worse_never_confirms(baseline_dir: Path) -> None:
    # the runs together stay 8-16% worse, but only because of the first run: the fresh processes alone are 1.4% off;
    # after the last look it is still undecided, and a check never fails on its first run's word
    gate = gate_for(baseline_dir, retimed=[(3.45, 0.0)] * 4)
    check = judged(gate, make_case(speedup=2.5))["speedup_vs_fp32"]
    assert check.outcome == "pass" and "not confirmed" in check.message
    gate = gate_for(baseline_dir, retimed=[(3.1, 0.0)])  # the same first run, now repeated: 11% worse alone
    assert judged(gate, make_case(speedup=2.5))["speedup_vs_fp32"].outcome == "fail"


def test_looks_that_run_out_undecided_leave_the_check_unjudged(baseline_dir: Path) -> None:
    # 8.6% worse, then four fresh processes 6.6% worse each: together about 7%, beyond half the tolerance but not
    # beyond it, so neither confirmed nor cleared: fail closed, the --unjudged policy decides
    gate = gate_for(baseline_dir, retimed=[(3.27, 0.0)] * 4)
    check = judged(gate, make_case(speedup=3.2))["speedup_vs_fp32"]
    assert check.outcome == "unjudged" and check.unjudged and not check.failed
    assert check.message.startswith("undecided after 4 fresh-process re-measurements: ")
    assert "record more baseline runs" in check.message


def test_a_failed_re_measurement_leaves_the_check_not_judged(baseline_dir: Path) -> None:
    class Broken(FakeGate):
        def retime(self, measured: Measured) -> tuple[dict[str, dict[str, float]], float | None]:
            raise HarnessError("the re-measuring process failed (exit 1): boom")

    gate = Broken(settings(baseline_dir))
    gate._environment = dict(ENVIRONMENT)
    check = judged(gate, make_case(speedup=2.95))["speedup_vs_fp32"]
    assert check.outcome == "unjudged" and check.unjudged and not check.failed
    assert "confirmation could not complete: the re-measuring process failed (exit 1): boom" in check.message


def test_an_unremarkable_case_is_not_re_measured(baseline_dir: Path) -> None:
    gate = gate_for(baseline_dir)  # retime would fail: nothing queued
    checks = judged(gate, make_case(speedup=3.48))
    assert {c.outcome for c in checks.values()} <= {"pass", "skip"}
    assert gate.cases["static_int8-cpu-bs1"].confirmation is None


def test_a_model_slowdown_fails_fp32_through_the_yardstick(baseline_dir: Path) -> None:
    gate = gate_for(baseline_dir, retimed=[(1.16, 0.0)])
    check = judged(gate, make_case("fp32", latency_ratio=1.15))["latency_vs_yardstick"]
    assert check.outcome == "fail" and "15.0% worse" in check.message


def test_faster_timing_is_reported_never_failed(baseline_dir: Path) -> None:
    checks = judged(gate_for(baseline_dir), make_case(speedup=4.5))
    assert checks["speedup_vs_fp32"].outcome == "improved" and not checks["speedup_vs_fp32"].failed
    assert "refresh the baseline" in checks["speedup_vs_fp32"].message


@pytest.mark.parametrize(
    ("changes", "contention", "why"),
    [({"xdist_workers": 2}, 0.0, "pytest-xdist workers share this CPU"), ({}, 0.4, "the machine was busy")],
    ids=["xdist", "busy"],
)
def test_timing_is_not_judged_where_it_cannot_be(
    baseline_dir: Path, changes: dict[str, Any], contention: float, why: str
) -> None:
    checks = judged(gate_for(baseline_dir, **changes), make_case(speedup=1.0, size_bytes=1, contention=contention))
    for metric in ("speedup_vs_fp32", "speedup_floor"):
        assert checks[metric].outcome == "unjudged" and checks[metric].message.startswith("not judged: ")
        assert why in checks[metric].message
    assert checks["size_bytes"].outcome == "stale"  # deterministic checks still run
    assert checks["top1_vs_fp32"].outcome == "pass"


def test_a_busy_re_measurement_cannot_confirm(baseline_dir: Path) -> None:
    check = judged(gate_for(baseline_dir, retimed=[(2.9, 0.5)]), make_case(speedup=2.95))["speedup_vs_fp32"]
    assert check.outcome == "unjudged" and "during re-measurement 1" in check.message


def test_the_holm_family_counts_every_planned_timing_check(baseline_dir: Path) -> None:
    gate = gate_for(baseline_dir)
    # fp32: 1 (yardstick); static_int8: baseline + floor; prune_unstructured: baseline + floor
    assert gate.family.size == 5
    judged(gate, make_case(speedup=3.5))
    assert gate.family.p_values == {}  # nothing flagged: an unflagged check never fails, its p counts as 1
    gate.retimed = [(3.0, 0.0)]
    judged(gate, make_case(speedup=2.95))
    assert set(gate.family.p_values) == {"static_int8-cpu-bs1:speedup_vs_fp32"}


def test_without_a_baseline_every_baseline_check_is_unjudged_and_the_floor_still_judges(tmp_path: Path) -> None:
    gate = gate_for(tmp_path, retimed=[(1.5, 0.0)])
    checks = judged(gate, make_case(speedup=1.5))
    baseline = ("top1", "size_bytes", "compressed_size_bytes", "macs", "peak_memory_bytes", "speedup_vs_fp32")
    for metric in baseline:
        assert checks[metric].outcome == "unjudged" and checks[metric].message.startswith("no baseline for ")
    assert checks["speedup_floor"].outcome == "fail" and "against the floor 3x" in checks["speedup_floor"].message


def test_update_mode_plans_no_baseline_check(baseline_dir: Path) -> None:
    checks = judged(gate_for(baseline_dir, update_baselines=True), make_case(speedup=3.5, size_bytes=1))
    assert checks["baseline"].outcome == "info"
    assert checks["baseline"].message.startswith("not checked: --update-baselines")
    assert "size_bytes" not in checks


def test_a_case_missing_from_the_baseline_says_how_to_add_it(baseline_dir: Path) -> None:
    checks = judged(gate_for(baseline_dir), make_case("bf16", speedup=1.5))
    assert checks["speedup_vs_fp32"].outcome == "unjudged"
    assert "has no entry for bf16-cpu-bs1" in checks["speedup_vs_fp32"].message


def test_memory_not_measured_is_unjudged_and_says_how_to_measure_it(baseline_dir: Path) -> None:
    check = judged(gate_for(baseline_dir), make_case(speedup=3.5, peak_memory_bytes=None))["peak_memory_bytes"]
    assert check.outcome == "unjudged" and "needs g++" in check.message


def test_a_top1_of_another_model_is_unjudged_with_what_differs(baseline_dir: Path) -> None:
    other = make_case(speedup=3.5, identity={**IDENTITY, "weights_sha256": "x" * 16})
    check = judged(gate_for(baseline_dir), other)["top1"]
    assert check.outcome == "unjudged" and "refused" in check.message and "weights_sha256" in check.message


class Remeasuring(FakeGate):
    """A Gate that re-measures through the real harness.gate.remeasure, with the child's command chosen."""

    def retime(self, measured: Measured) -> tuple[dict[str, dict[str, float]], float | None]:
        return Gate.retime(self, measured)


@pytest.mark.parametrize(("child", "why"), [
    ("import sys; print('segfault in a kernel', file=sys.stderr); sys.exit(139)", "failed (exit 139)"),
    ("import time; time.sleep(30)", "took more than"),
], ids=["crash", "timeout"])
def test_a_confirmation_that_crashes_or_times_out_is_unjudged_and_fails_the_run_under_fail(
    baseline_dir: Path, monkeypatch: pytest.MonkeyPatch, child: str, why: str
) -> None:
    """A flagged check whose fresh-process re-measurement cannot complete is never a pass: unjudged, with why."""
    from harness.gate import remeasure, runner

    monkeypatch.setattr(remeasure.Request, "argv", lambda self, out: [sys.executable, "-c", child])
    monkeypatch.setattr(runner, "REMEASURE_BASE_S", 1.0)
    monkeypatch.setattr(runner, "REMEASURE_PER_S", 0.0)
    gate = Remeasuring(settings(baseline_dir))
    gate._environment = dict(ENVIRONMENT)
    built = SimpleNamespace(build_seconds=0.0)
    checks = gate.judge(Measured(make_case(speedup=2.95), built, torch.device("cpu")))  # type: ignore[arg-type]
    speedup = next(c for c in checks if c.metric == "speedup_vs_fp32")
    assert speedup.outcome == "unjudged" and why in speedup.message and "first: " in speedup.message
    assert not speedup.failed and speedup.unjudged  # under --unjudged fail, test_gate fails the case on it


def test_a_re_measurement_runs_on_the_gpu_of_the_first_measurement(
    baseline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several GPUs, worker gw1 measured on cuda:1: its confirmation must run there, not on GPU 0."""
    from harness.gate import runner
    from harness.gate.remeasure import Remeasured

    asked: list[Any] = []

    def remeasure(request: Any, *, timeout_s: float) -> Remeasured:
        asked.append(request)
        return Remeasured({"speedup_vs_fp32": {"value": 3.5, "log_se": 0.01}}, 0.0, gate.env_key("cuda"), {})

    monkeypatch.setattr(runner, "remeasure", remeasure)
    gate = Remeasuring(settings(baseline_dir))
    gate._environment = {**ENVIRONMENT, "gpu_name": "NVIDIA H200", "cuda_version": "13.0"}
    case = make_case(speedup=2.0, device="cuda")
    built = SimpleNamespace(build_seconds=1.0)
    gate.retime(Measured(case, built, torch.device("cuda", 1)))  # type: ignore[arg-type]
    assert asked[0].device == "cuda:1" and "--device" in asked[0].argv(Path("o"))
    assert asked[0].argv(Path("o"))[asked[0].argv(Path("o")).index("--device") + 1] == "cuda:1"


def test_the_re_measuring_child_makes_its_gpu_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.gate import remeasure

    pinned: list[Any] = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    remeasure.pin_device("cuda:1")
    remeasure.pin_device("cpu")
    assert pinned == [torch.device("cuda", 1)]
