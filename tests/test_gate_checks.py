"""Every check in both directions: it fails when it must and passes (or reports) when it must."""

from __future__ import annotations

from pathlib import Path

import pytest
from _gate import ENVIRONMENT, IDENTITY, make_case, stored, with_wrong

from harness.gate.checks import (
    Check,
    TimingTest,
    baseline_checks,
    check_accuracy,
    check_accuracy_against_baseline,
    check_value,
    speedup_floor_test,
)
from harness.gate.metrics import get_metric
from harness.gate.spreads import SpreadModel
from harness.gate.store import UPDATE_HINT
from harness.gate.thresholds import THRESHOLDS_FILE, Thresholds, load_thresholds


@pytest.fixture(scope="module")
def th() -> Thresholds:
    """The reviewed thresholds file of the repository."""
    return load_thresholds()


def timing_checks(tmp_path: Path, th: Thresholds, runs: list[list[object]], case: object) -> list[Check | TimingTest]:
    """Return `case`'s checks against a baseline stored from `runs`, its spreads fitted over that baseline."""
    baseline = stored(tmp_path, *runs)
    entry = baseline.entries[case.case_id]  # type: ignore[attr-defined]
    return baseline_checks(case, entry, th, "b.json", SpreadModel.of(baseline.entries, th))  # type: ignore[arg-type]


def names_everything(check: Check, *parts: str) -> None:
    line = check.line()
    for part in (check.case_id, check.metric, check.source, *parts):
        assert part in line, f"{part!r} not in {line!r}"


# ------------------------------------------------------------------------------ accuracy against fp32


def test_accuracy_passes_on_identical_predictions(th: Thresholds) -> None:
    check = check_accuracy(make_case(), make_case("fp32"), th)
    assert check.outcome == "pass" and check.value == check.baseline == 1.0


def test_accuracy_fails_on_a_clear_drop(th: Thresholds) -> None:
    check = check_accuracy(make_case(correct=with_wrong(40)), make_case("fp32"), th)
    assert check.outcome == "fail" and check.failed
    assert check.limit == pytest.approx(0.99) and check.source == str(THRESHOLDS_FILE)
    names_everything(check, "REGRESSION", "measured 0.92", "limit 0.99", "baseline 1", "40 right only before")


def test_accuracy_drop_within_noise_passes(th: Thresholds) -> None:
    # 1.2 points measured against a 1-point allowance: not shown to exceed it on 500 images.
    assert check_accuracy(make_case(correct=with_wrong(6)), make_case("fp32"), th).outcome == "pass"


def test_accuracy_allowance_sums_over_techniques(th: Thresholds) -> None:
    ref = make_case("fp32", correct=[True] * 2000)
    drop = [False] * 40 + [True] * 1960  # 2 points: beyond static_int8's 1, within 3 for the combination
    assert check_accuracy(make_case(correct=drop), ref, th).outcome == "fail"
    assert check_accuracy(make_case("prune_structured+static_int8", correct=drop), ref, th).outcome == "pass"


def test_accuracy_without_per_image_results_fails_loudly(th: Thresholds) -> None:
    ref = make_case("fp32")
    ref.correct = None
    check = check_accuracy(make_case(), ref, th)
    assert check.outcome == "fail" and "must evaluate" in check.message


def test_accuracy_of_a_case_that_did_not_run_is_unjudged(th: Thresholds) -> None:
    check = check_accuracy(make_case(status="skipped"), make_case("fp32"), th)
    assert check.outcome == "unjudged" and "not here" in check.message


# --------------------------------------------------------------------------- accuracy against baseline


def test_accuracy_against_the_baseline_in_both_directions(tmp_path: Path, th: Thresholds) -> None:
    entry = stored(tmp_path, [make_case(correct=with_wrong(10))]).entries["static_int8-cpu-bs1"]
    source = "b.json"
    worse = check_accuracy_against_baseline(make_case(correct=with_wrong(30)), entry, th, source)
    assert worse.outcome == "fail" and "paired test on 500 images of the same model" in worse.message
    better = check_accuracy_against_baseline(make_case(correct=with_wrong(0)), entry, th, source)
    assert better.outcome == "stale" and better.failed and UPDATE_HINT in better.message
    same = check_accuracy_against_baseline(make_case(correct=with_wrong(11)), entry, th, source)
    assert same.outcome == "pass"


@pytest.mark.parametrize("key", ["data", "eval_ids_sha256", "arch", "weights_sha256"])
def test_accuracy_of_another_model_or_images_is_refused_not_paired(tmp_path: Path, th: Thresholds, key: str) -> None:
    entry = stored(tmp_path, [make_case()]).entries["static_int8-cpu-bs1"]
    other = make_case(correct=with_wrong(100), identity={**IDENTITY, key: "different"})
    check = check_accuracy_against_baseline(other, entry, th, "b.json")
    assert check.outcome == "unjudged" and not check.failed
    assert check.message.startswith("refused") and key in check.message and "different" in check.message


def test_accuracy_on_a_different_number_of_images_is_refused(tmp_path: Path, th: Thresholds) -> None:
    entry = stored(tmp_path, [make_case()]).entries["static_int8-cpu-bs1"]
    check = check_accuracy_against_baseline(make_case(correct=[True] * 400), entry, th, "b.json")
    assert check.outcome == "unjudged" and "500 images in the baseline, 400 now" in check.message


# ----------------------------------------------------------------------------------- exact and memory


@pytest.mark.parametrize(
    ("metric", "stored_value", "value", "outcome"),
    [
        ("size_bytes", 1000, 1001, "fail"),
        ("size_bytes", 1000, 999, "stale"),
        ("size_bytes", 1000, 1000, "pass"),
        ("macs", 10**9, 10**9 + 1, "fail"),
        ("macs", 10**9, 10**9 - 1, "stale"),
        ("compressed_size_bytes", 10**6, 10**6 + 9_000, "pass"),
        ("compressed_size_bytes", 10**6, 10**6 + 11_000, "fail"),
        ("peak_memory_bytes", 100_000_000, 150_000_000, "fail"),
        ("peak_memory_bytes", 100_000_000, 104_000_000, "pass"),
        ("peak_memory_bytes", 100_000_000, 50_000_000, "improved"),
        ("peak_memory_bytes", 1_000_000, 1_900_000, "pass"),  # within min_abs_change (1 MiB)
    ],
)
def test_values_against_the_baseline(
    tmp_path: Path, th: Thresholds, metric: str, stored_value: int, value: int, outcome: str
) -> None:
    entry = stored(tmp_path, [make_case(**{metric: stored_value})]).entries["static_int8-cpu-bs1"]
    check = check_value(make_case(**{metric: value}), entry, get_metric(metric), th, "b.json")
    assert check.outcome == outcome
    assert check.failed == (outcome in ("fail", "stale"))
    if outcome == "fail":
        names_everything(check, "REGRESSION", f"measured {value:.6g}", f"baseline {stored_value:.6g}", "b.json")


def test_peak_memory_not_measured_is_unjudged(tmp_path: Path, th: Thresholds) -> None:
    entry = stored(tmp_path, [make_case()]).entries["static_int8-cpu-bs1"]
    check = check_value(make_case(peak_memory_bytes=None), entry, get_metric("peak_memory_bytes"), th, "b.json")
    assert check.outcome == "unjudged" and "not measured on this platform" in check.message


# --------------------------------------------------------------------------------------------- timing


def test_a_clear_slowdown_is_significant_and_beyond_the_tolerance(tmp_path: Path, th: Thresholds) -> None:
    runs = [[make_case(speedup=s)] for s in (3.50, 3.52, 3.47, 3.51, 3.49)]
    found = timing_checks(tmp_path, th, runs, make_case(speedup=3.5 / 1.15))
    (test,) = [t for t in found if isinstance(t, TimingTest)]
    assert test.metric == "speedup_vs_fp32" and test.beyond_tolerance
    assert test.shift.p_worse < 1e-3 and test.shift.change == pytest.approx(0.15, abs=0.01)
    assert test.limit == pytest.approx(test.reference / 1.1)


def test_noise_within_the_baseline_spread_is_not_significant(tmp_path: Path, th: Thresholds) -> None:
    runs = [[make_case(speedup=s)] for s in (3.0, 3.6, 3.3, 3.9, 2.9)]  # a variant that moves 10% between runs
    (test,) = [t for t in timing_checks(tmp_path, th, runs, make_case(speedup=2.8)) if isinstance(t, TimingTest)]
    assert test.beyond_tolerance and test.shift.p_worse > 0.01


def test_a_small_change_is_within_the_tolerance_however_significant(tmp_path: Path, th: Thresholds) -> None:
    runs = [[make_case(speedup=3.5, log_se=0.001)]] * 5
    (test,) = [t for t in timing_checks(tmp_path, th, runs, make_case(speedup=3.3)) if isinstance(t, TimingTest)]
    assert not test.beyond_tolerance


def test_fp32_is_judged_by_its_latency_against_the_yardstick(tmp_path: Path, th: Thresholds) -> None:
    runs = [[make_case("fp32", latency_ratio=r)] for r in (1.0, 1.01, 0.99)]
    found = timing_checks(tmp_path, th, runs, make_case("fp32", latency_ratio=1.2))
    (test,) = [t for t in found if isinstance(t, TimingTest)]
    assert test.metric == "latency_vs_yardstick" and test.shift.worse > 0 and test.beyond_tolerance
    assert {c.metric for c in found} == {"top1", "size_bytes", "compressed_size_bytes", "macs",
                                         "peak_memory_bytes", "latency_vs_yardstick"}


def test_a_variant_at_about_1x_is_never_reported_faster(tmp_path: Path, th: Thresholds) -> None:
    runs = [[make_case("prune_unstructured", speedup=1.0)]]
    (test,) = [t for t in timing_checks(tmp_path, th, runs, make_case("prune_unstructured", speedup=1.5))
               if isinstance(t, TimingTest)]
    assert test.about_one


@pytest.mark.parametrize(
    ("speedup", "sd", "below"),
    [(2.0, 0.03, True), (3.5, 0.03, False), (2.9, 0.10, False)],
    ids=["far-below", "above", "below-within-noise"],
)
def test_speedup_floor(th: Thresholds, speedup: float, sd: float, below: bool) -> None:
    test = speedup_floor_test(make_case(speedup=speedup), th, sd, 4.0, ENVIRONMENT)
    assert isinstance(test, TimingTest) and test.reference == 3.0 and test.tolerance == 0.0
    assert (test.shift.p_worse < 1e-3) == below
    assert "against the floor 3x" in test.describe()


def test_no_floor_is_a_note_and_a_missing_speedup_fails(th: Thresholds) -> None:
    note = speedup_floor_test(make_case(batch_size=4), th, 0.03, 4.0, ENVIRONMENT)
    assert isinstance(note, Check) and note.outcome == "info" and "no floor at batch 4" in note.message
    assert not note.failed and not note.unjudged
    missing = speedup_floor_test(make_case(speedup=None), th, 0.03, 4.0, ENVIRONMENT)
    assert isinstance(missing, Check) and missing.outcome == "fail" and "no speedup was measured" in missing.message
