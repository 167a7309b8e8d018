"""scripts/gate_quality.py counts what it says: a plant is caught only by a failed check of the planted metric."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from helpers import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gate_quality.py"


@pytest.fixture
def quality(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The gate_quality module, loaded from its file."""
    return load_script(SCRIPT, "gate_quality_under_test", monkeypatch)


def failed(variant: str, metric: str, outcome: str = "fail", batch: int = 32) -> dict[str, object]:
    return {"variant": variant, "metric": metric, "outcome": outcome, "batch_size": batch,
            "case_id": f"{variant}-cpu-bs{batch}"}


PLANTS = [("slow", "compile", 0.15), ("size", "static_int8", 0.05)]


def test_a_failed_check_of_the_planted_metric_catches_the_plant(quality: ModuleType) -> None:
    checks = [failed("compile", "speedup_vs_fp32"), failed("static_int8", "size_bytes")]
    caught, alarms, collateral = quality.catches(checks, PLANTS)
    assert caught == {"slow compile-cpu-bs32": True, "size static_int8-cpu-bs32": True}
    assert alarms == [] and collateral == []


def test_another_metric_of_the_planted_variant_is_a_false_alarm(quality: ModuleType) -> None:
    caught, alarms, collateral = quality.catches([failed("compile", "peak_memory_bytes")], PLANTS)
    assert caught == {}
    assert alarms == ["compile-cpu-bs32 peak_memory_bytes"]


def test_a_slowdown_of_a_variant_whose_plant_adds_work_per_call_is_collateral(quality: ModuleType) -> None:
    plants = [("mem", "prune_structured", 0.5)]
    checks = [failed("prune_structured", "speedup_vs_fp32"), failed("prune_structured", "top1")]
    caught, alarms, collateral = quality.catches(checks, plants)
    assert caught == {} and collateral == ["prune_structured-cpu-bs32 speedup_vs_fp32"]
    assert alarms == ["prune_structured-cpu-bs32 top1"]  # the mem plant cannot change accuracy


def test_the_planted_metric_of_another_variant_is_a_false_alarm(quality: ModuleType) -> None:
    caught, alarms, collateral = quality.catches([failed("bf16", "speedup_vs_fp32", batch=1)], PLANTS)
    assert caught == {}
    assert alarms == ["bf16-cpu-bs1 speedup_vs_fp32"]


def test_a_stale_verdict_never_catches_a_plant(quality: ModuleType) -> None:
    caught, alarms, collateral = quality.catches([failed("static_int8", "size_bytes", outcome="stale")], PLANTS)
    assert caught == {}
    assert alarms == ["static_int8-cpu-bs32 size_bytes"]


def test_failed_checks_reads_fail_and_stale_from_a_record(quality: ModuleType, tmp_path: Path) -> None:
    record = tmp_path / "run.json"
    record.write_text(
        '{"cases": [{"variant": "compile", "batch_size": 1, "checks": ['
        '{"metric": "speedup_vs_fp32", "outcome": "fail", "case_id": "compile-cpu-bs1"},'
        '{"metric": "size_bytes", "outcome": "stale", "case_id": "compile-cpu-bs1"},'
        '{"metric": "top1", "outcome": "pass", "case_id": "compile-cpu-bs1"}]}]}',
        encoding="utf-8",
    )
    assert [c["metric"] for c in quality.failed_checks(record)] == ["speedup_vs_fp32", "size_bytes"]
    assert quality.failed_checks(tmp_path / "missing.json") == []


def test_summarize_counts_runs_with_a_false_alarm_and_catches_per_case(quality: ModuleType) -> None:
    runs = [
        {"run": 0, "exit": 1, "seconds": 10.0, "caught": {"slow compile-cpu-bs32": True}, "false_alarms": []},
        {"run": 1, "exit": 1, "seconds": 20.0, "caught": {}, "false_alarms": ["bf16-cpu-bs1 top1"]},
    ]
    row = quality.summarize("planted", runs, "slow:compile:0.15")
    assert row["false_alarm_runs"] == 1
    assert row["caught"] == {"slow compile-cpu-bs32": 1}
    assert row["mean_seconds"] == 15.0
    unchanged = quality.summarize("unchanged", [{**runs[0], "caught": {}}], None)
    assert unchanged["false_alarm_runs"] == 1  # unplanted and the gate failed: that is a false alarm


def test_wilson_interval_of_zero_in_ten(quality: ModuleType) -> None:
    low, high = quality.wilson(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-3)


class FakeWindow:
    """Stands in for harness.contention.Contention: hands out the next share from a list."""

    shares: list[float | None] = []

    def __enter__(self) -> FakeWindow:
        self.share = FakeWindow.shares.pop(0)
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_quiet_enough_waits_until_others_fall_under_the_limit(
    quality: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeWindow.shares = [0.6, 0.3, 0.01, 0.9]
    monkeypatch.setattr(quality, "Contention", FakeWindow)
    monkeypatch.setattr(quality.time, "sleep", lambda s: None)
    assert quality.quiet_enough(limit=0.05) == 0.01
    assert FakeWindow.shares == [0.9]


def test_quiet_enough_gives_up_at_its_deadline_and_says_how_busy(
    quality: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeWindow.shares = [0.6, 0.7, 0.8]
    clock = iter([0.0, 50.0, 200.0, 300.0])
    monkeypatch.setattr(quality, "Contention", FakeWindow)
    monkeypatch.setattr(quality.time, "sleep", lambda s: None)
    monkeypatch.setattr(quality.time, "time", lambda: next(clock))
    assert quality.quiet_enough(limit=0.05, wait_s=120.0) == 0.7
