"""Tests of harness.baselines: the thresholds file, the baseline store and the checks, on synthetic cases."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import baselines
from harness.baselines import (
    BASELINE_SCHEMA_VERSION,
    THRESHOLDS_FILE,
    UPDATE_HINT,
    Check,
    Thresholds,
    baseline_path,
    check_accuracy,
    check_baseline,
    check_speedup,
    failure_message,
    load_baseline,
    load_thresholds,
    make_provenance,
    write_baseline,
)
from harness.errors import HarnessError, ResultsError, TechniqueError
from harness.results import CaseResult
from harness.techniques import NAMES, PRESETS

ENV = "cpu-test-2t-torch2.14"
PROVENANCE = {
    "git_commit": "abc123",
    "git_dirty": False,
    "date": "2026-11-28T00:00:00+00:00",
    "command": "pytest bench --update-baselines",
    "torch": "2.14.1",
    "device_name": "test cpu",
}


def make_case(
    variant: str = "static_int8",
    *,
    device: str = "cpu",
    batch_size: int = 1,
    correct: list[bool] | None = None,
    median: float = 10.0,
    iqr: float = 0.1,
    samples: list[float] | None = None,
    speedup: float | None = 3.5,
    speedup_interval: tuple[float, float] | None = None,
    size_bytes: int = 11_800_000,
    compressed_size_bytes: int = 10_000_000,
    peak_memory_bytes: int = 50_000_000,
    status: str = "ok",
) -> CaseResult:
    """Return a synthetic measured case (500 eval images, all right unless `correct` says otherwise)."""
    correct = [True] * 500 if correct is None else correct
    extra: dict[str, object] = {}
    if speedup is not None:
        low, high = speedup_interval or (speedup * 0.97, speedup * 1.03)
        extra.update(speedup_low=low, speedup_high=high)
    if samples is not None:
        extra["latency_samples_ms"] = samples
    return CaseResult(
        variant=variant,
        device=device,
        batch_size=batch_size,
        top1=sum(correct) / len(correct),
        top5=1.0,
        latency_ms={"median": median, "p90": median * 1.05, "iqr": iqr},
        throughput_ips=batch_size * 1000 / median,
        size_bytes=size_bytes,
        compressed_size_bytes=compressed_size_bytes,
        params=11_000_000,
        nonzero_params=11_000_000,
        macs=1_800_000_000,
        peak_memory_bytes=peak_memory_bytes,
        speedup_vs_fp32=speedup,
        top1_change=0.0,
        eval_images=len(correct),
        correct=correct,
        status=status,
        reason=None if status == "ok" else "not here",
        extra=extra,
    )


def with_wrong(n_wrong: int, n: int = 500) -> list[bool]:
    """Return correctness with the first `n_wrong` of `n` images wrong."""
    return [False] * n_wrong + [True] * (n - n_wrong)


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    """The reviewed thresholds file of the repository."""
    return load_thresholds()


def thresholds_doc() -> dict[str, Any]:
    return json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))


def write_thresholds(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- thresholds


def test_thresholds_file_is_canonical_json_with_every_technique(thresholds: Thresholds) -> None:
    text = THRESHOLDS_FILE.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert set(thresholds.allowed_top1_drop) == set(NAMES), "every registered technique needs an allowance"
    assert thresholds.stale_fails is True
    for technique in NAMES:  # every technique's floors were looked at, even where they are null
        for device in ("cpu", "cuda"):
            thresholds.speedup_floor(technique, device, 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
def test_allowance_of_a_combination_is_the_sum(names: list[str]) -> None:
    t = load_thresholds()
    assert t.allowed_drop("+".join(names)) == pytest.approx(
        math.fsum(t.allowed_drop(n) for n in names), abs=1e-12
    )
    assert t.allowed_drop("+".join(names)) == pytest.approx(
        t.allowed_drop("+".join(reversed(names))), abs=1e-12
    )


def test_allowance_of_presets_and_known_values(thresholds: Thresholds) -> None:
    assert thresholds.allowed_drop("fp32") == 0.0
    assert thresholds.allowed_drop("prune_structured+static_int8") == pytest.approx(0.03)
    assert thresholds.allowed_drop("fastest_cpu") == thresholds.allowed_drop(PRESETS["fastest_cpu"])


def test_allowance_of_unknown_technique_lists_the_valid_ones(thresholds: Thresholds) -> None:
    with pytest.raises(TechniqueError, match=r"unknown technique 'int3'.*static_int8"):
        thresholds.allowed_drop("bf16+int3")


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=1024))
def test_floors_follow_the_batch_regime(batch_size: int) -> None:
    t = load_thresholds()
    floor = t.speedup_floor("static_int8", "cpu", batch_size)
    if batch_size == 1:
        assert floor == 3.0
    elif batch_size >= t.large_batch_min:
        assert floor == 2.0
    else:
        assert floor is None
    assert t.speedup_floor("fp32", "cpu", batch_size) is None
    assert t.speedup_floor("static_int8", "cuda:0", batch_size) is None


def test_floor_lookup_by_preset_by_technique_set_and_device(thresholds: Thresholds) -> None:
    assert thresholds.speedup_floor("fastest_cpu", "cpu", 32) == 2.5
    assert thresholds.speedup_floor("static_int8+prune_structured", "cpu", 1) == 3.0
    assert thresholds.speedup_floor("bf16+channels_last", "cuda:1", 64) == 1.5
    assert thresholds.speedup_floor("fp16", "cuda", 1) is None
    assert thresholds.speedup_floor("bf16+compile", "cpu", 32) is None  # unlisted: no floor


def test_tolerances_per_device_and_min_change(thresholds: Thresholds) -> None:
    assert thresholds.tolerance("size_bytes", "cpu") == 0.0
    assert thresholds.tolerance("peak_memory_bytes", "cpu") > thresholds.tolerance(
        "peak_memory_bytes", "cuda"
    )
    assert thresholds.tolerance("peak_memory_bytes") == thresholds.tolerance("peak_memory_bytes", "cpu")
    assert thresholds.min_change("size_bytes", "cpu") == 0.0
    with pytest.raises(HarnessError, match="unknown metric 'latency'.*latency_median_ms"):
        thresholds.tolerance("latency")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(schema_version=2), "newer harness"),
        (lambda d: d.update(schema_version=0), "no migration"),
        (lambda d: d["baseline_tolerance"].pop("size_bytes"), r"missing \['size_bytes'\]"),
        (lambda d: d["allowed_top1_drop"].update(int3=0.1), "unknown technique 'int3'"),
        (lambda d: d["speedup_floor"]["bf16"]["cpu"].pop("bs1"), "exactly the regimes"),
        (lambda d: d["speedup_floor"].update({"bf16+channels_last": {}}), "same techniques"),
        (lambda d: d.update(stale_fails="yes"), "true or false"),
        (lambda d: d.update(speedup_floors={}), "unknown keys"),
    ],
)
def test_bad_thresholds_are_refused(tmp_path: Path, edit: Any, match: str) -> None:
    doc = thresholds_doc()
    edit(doc)
    with pytest.raises(ResultsError, match=match):
        load_thresholds(write_thresholds(tmp_path, doc))


def test_missing_or_corrupt_thresholds_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        load_thresholds(tmp_path / "nope.json")
    bad = tmp_path / "t.json"
    bad.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(ResultsError, match="truncated or not JSON"):
        load_thresholds(bad)


def test_stale_can_be_made_report_only(tmp_path: Path) -> None:
    doc = thresholds_doc()
    doc["stale_fails"] = False
    t = load_thresholds(write_thresholds(tmp_path, doc))
    stale = Check("c", "m", "stale", 1.0, 2.0, 3.0, "f", "")
    assert stale.failed(t.stale_fails) is False
    assert stale.failed() is True
    assert Check("c", "m", "fail", 1.0, 2.0, 3.0, "f", "").failed(False) is True


# ------------------------------------------------------------------------------------------------ store


def test_baseline_round_trip(tmp_path: Path) -> None:
    cases = [make_case("fp32", speedup=None), make_case(), make_case("bf16", status="skipped")]
    path = write_baseline(tmp_path, ENV, cases, PROVENANCE)
    assert path == baseline_path(tmp_path, ENV) == tmp_path / f"{ENV}.json"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    loaded = load_baseline(tmp_path, ENV)
    assert loaded is not None and loaded.path == path and loaded.env_key == ENV
    assert sorted(loaded.cases) == ["fp32-cpu-bs1", "static_int8-cpu-bs1"]  # the skipped case is not stored
    entry = loaded.cases["static_int8-cpu-bs1"]
    assert entry["correct"] == "1" * 500 and entry["latency_median_ms"] == 10.0
    assert entry["noise"] == pytest.approx(0.01) and entry["provenance"]["git_commit"] == "abc123"
    assert loaded.provenance == PROVENANCE
    assert json.loads(text)["schema_version"] == BASELINE_SCHEMA_VERSION


def test_absent_baseline_is_none(tmp_path: Path) -> None:
    assert load_baseline(tmp_path, ENV) is None


def test_failed_write_leaves_the_old_baseline_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_baseline(tmp_path, ENV, [make_case()], PROVENANCE)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ResultsError, match="disk full"):
        write_baseline(tmp_path, ENV, [make_case(median=20.0)], PROVENANCE)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_partial_update_keeps_the_other_cases(tmp_path: Path) -> None:
    write_baseline(tmp_path, ENV, [make_case("fp32", speedup=None), make_case(median=10.0)], PROVENANCE)
    newer = {**PROVENANCE, "git_commit": "def456"}
    write_baseline(tmp_path, ENV, [make_case(median=8.0), make_case("fp32", status="error")], newer)
    loaded = load_baseline(tmp_path, ENV)
    assert loaded is not None
    assert loaded.cases["static_int8-cpu-bs1"]["latency_median_ms"] == 8.0
    assert loaded.cases["static_int8-cpu-bs1"]["provenance"]["git_commit"] == "def456"
    assert loaded.cases["fp32-cpu-bs1"]["provenance"]["git_commit"] == "abc123"  # kept, errored this time


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"schema_version": 1, "env_key": ', "truncated or not JSON"),
        ("[]", "not an object"),
        (json.dumps({"schema_version": 99, "env_key": ENV, "cases": {}, "provenance": {}}), "newer harness"),
        (json.dumps({"env_key": ENV, "cases": {}, "provenance": {}}), "no integer 'schema_version'"),
        (
            json.dumps({"schema_version": 1, "env_key": "other", "cases": {}, "provenance": {}}),
            "is for env_key",
        ),
        (
            json.dumps(
                {"schema_version": 1, "env_key": ENV, "cases": {"a": {"top1": "x"}}, "provenance": {}}
            ),
            "must be a number",
        ),
        (
            json.dumps(
                {"schema_version": 1, "env_key": ENV, "cases": {"a": {"latency": 1}}, "provenance": {}}
            ),
            "unknown field",
        ),
    ],
)
def test_bad_baseline_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    baseline_path(tmp_path, ENV).write_text(text, encoding="utf-8")
    with pytest.raises(ResultsError, match=match) as err:
        load_baseline(tmp_path, ENV)
    assert ENV in str(err.value)


def test_corrupt_baseline_is_not_overwritten(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, ENV)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ResultsError, match="delete it"):
        write_baseline(tmp_path, ENV, [make_case()], PROVENANCE)
    assert path.read_text(encoding="utf-8") == "{"


def test_make_provenance_names_the_device() -> None:
    env = {"git_commit": "c", "git_dirty": True, "torch": "2.14.1", "cpu_model": "EPYC", "gpu_name": "H200"}
    assert make_provenance(env, "cmd", "cuda:0")["device_name"] == "H200"
    prov = make_provenance(env, "cmd", "cpu")
    assert prov["device_name"] == "EPYC" and prov["git_dirty"] is True and prov["command"] == "cmd"


# ----------------------------------------------------------------------------------------------- checks


def assert_names_everything(check: Check, *parts: str) -> None:
    message = failure_message(check)
    for part in (check.case_id, check.metric, check.source, *parts):
        assert part in message, f"{part!r} not in {message!r}"


def test_accuracy_passes_on_identical_predictions(thresholds: Thresholds) -> None:
    check = check_accuracy(make_case(), make_case("fp32", speedup=None), thresholds)
    assert check.outcome == "pass" and check.value == check.baseline == 1.0


def test_accuracy_fails_on_a_clear_drop(thresholds: Thresholds) -> None:
    case = make_case(correct=with_wrong(40))
    check = check_accuracy(case, make_case("fp32", speedup=None), thresholds)
    assert check.outcome == "fail"
    assert check.limit == pytest.approx(1.0 - 0.01) and check.source == str(THRESHOLDS_FILE)
    assert_names_everything(check, "measured 0.92", "limit 0.99", "baseline 1", "40 right only before")


def test_accuracy_drop_within_noise_passes(thresholds: Thresholds) -> None:
    # 1.2 points measured against a 1-point allowance: not shown to exceed it with 500 images.
    check = check_accuracy(make_case(correct=with_wrong(6)), make_case("fp32", speedup=None), thresholds)
    assert check.outcome == "pass"


def test_accuracy_allowance_sums_over_techniques(thresholds: Thresholds) -> None:
    ref = make_case("fp32", speedup=None, correct=[True] * 2000)
    drop = [False] * 40 + [True] * 1960  # 2 points: beyond static_int8's 1, well within 3 for the combination
    assert check_accuracy(make_case(correct=drop), ref, thresholds).outcome == "fail"
    combined = make_case("prune_structured+static_int8", correct=drop)
    assert check_accuracy(combined, ref, thresholds).outcome == "pass"


def test_accuracy_without_per_image_results_uses_the_point_estimate(thresholds: Thresholds) -> None:
    case, ref = make_case(correct=with_wrong(40)), make_case("fp32", speedup=None)
    ref.correct = None
    check = check_accuracy(case, ref, thresholds)
    assert check.outcome == "fail" and "point estimate" in check.message


def test_accuracy_skips_a_case_that_did_not_run(thresholds: Thresholds) -> None:
    check = check_accuracy(make_case(status="skipped"), make_case("fp32", speedup=None), thresholds)
    assert check.outcome == "skip" and "not here" in check.message


@pytest.mark.parametrize(
    ("batch_size", "speedup", "interval", "outcome"),
    [
        (1, 3.5, (3.3, 3.7), "pass"),
        (1, 2.0, (1.9, 2.1), "fail"),
        (1, 2.8, (2.5, 3.2), "pass"),  # under the floor, but within the noise: must not fire
        (32, 2.1, (2.0, 2.2), "pass"),  # large batch: floor 2.0
        (4, 1.0, (0.9, 1.1), "skip"),  # no floor between bs1 and large
    ],
)
def test_speedup_floor(
    thresholds: Thresholds, batch_size: int, speedup: float, interval: tuple[float, float], outcome: str
) -> None:
    check = check_speedup(
        make_case(batch_size=batch_size, speedup=speedup, speedup_interval=interval), thresholds
    )
    assert check.outcome == outcome
    if outcome == "fail":
        assert check.limit == 3.0
        assert_names_everything(check, "measured 2", "limit 3", "baseline none", "upper end")


def test_speedup_without_floor_skips_and_missing_speedup_fails(thresholds: Thresholds) -> None:
    assert check_speedup(make_case("fp32", speedup=None), thresholds).outcome == "skip"
    check = check_speedup(make_case(speedup=None), thresholds)
    assert check.outcome == "fail" and "no speedup was measured" in check.message


def stored(tmp_path: Path, case: CaseResult) -> baselines.Baseline:
    write_baseline(tmp_path, ENV, [case], PROVENANCE)
    loaded = load_baseline(tmp_path, ENV)
    assert loaded is not None
    return loaded


def by_metric(checks: list[Check]) -> dict[str, Check]:
    return {c.metric: c for c in checks}


def test_identical_run_passes_every_metric(tmp_path: Path, thresholds: Thresholds) -> None:
    checks = check_baseline(make_case(), stored(tmp_path, make_case()), thresholds)
    assert {c.outcome for c in checks} == {"pass"}
    assert set(by_metric(checks)) == set(baselines.METRIC_NAMES)


def test_latency_regression_fails_and_improvement_is_stale(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case(median=10.0))
    slow = by_metric(check_baseline(make_case(median=13.0), base, thresholds))
    assert slow["latency_median_ms"].outcome == "fail" and slow["throughput_ips"].outcome == "fail"
    assert slow["latency_median_ms"].limit == pytest.approx(11.0)
    assert_names_everything(
        slow["latency_median_ms"],
        "REGRESSION",
        "measured 13",
        "limit 11",
        "baseline 10",
        str(THRESHOLDS_FILE),
    )
    fast = by_metric(check_baseline(make_case(median=7.0), base, thresholds))
    assert fast["latency_median_ms"].outcome == "stale"
    assert_names_everything(
        fast["latency_median_ms"], "STALE BASELINE", "measured 7", "limit 9", "baseline 10", UPDATE_HINT
    )


def test_noise_widens_the_latency_tolerance(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case(median=10.0, iqr=2.0))  # 20% spread x 2 = 40% tolerance
    checks = by_metric(check_baseline(make_case(median=13.0, iqr=0.1), base, thresholds))
    assert checks["latency_median_ms"].outcome == "pass"
    assert "spread 20.0%" in checks["latency_median_ms"].message


def test_sizes_are_exact(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case(size_bytes=1000))
    assert (
        by_metric(check_baseline(make_case(size_bytes=1001), base, thresholds))["size_bytes"].outcome
        == "fail"
    )
    assert (
        by_metric(check_baseline(make_case(size_bytes=999), base, thresholds))["size_bytes"].outcome
        == "stale"
    )


def test_cpu_peak_memory_ignores_small_changes(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case(peak_memory_bytes=0))
    small = by_metric(check_baseline(make_case(peak_memory_bytes=8_000_000), base, thresholds))
    assert small["peak_memory_bytes"].outcome == "pass"
    big = by_metric(check_baseline(make_case(peak_memory_bytes=200_000_000), base, thresholds))
    assert big["peak_memory_bytes"].outcome == "fail"


def test_top1_against_stored_bits_is_paired(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case())
    lost = by_metric(check_baseline(make_case(correct=with_wrong(30)), base, thresholds))["top1"]
    assert lost.outcome == "fail" and "paired test on 500 images" in lost.message
    same = by_metric(check_baseline(make_case(correct=with_wrong(1)), base, thresholds))["top1"]
    assert same.outcome == "pass"
    gained = stored(tmp_path / "g", make_case(correct=with_wrong(30)))
    better = by_metric(check_baseline(make_case(), gained, thresholds))["top1"]
    assert better.outcome == "stale"


def test_speedup_tolerance_widens_with_its_interval(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case(speedup=3.0, speedup_interval=(2.9, 3.1)))
    tight = by_metric(check_baseline(make_case(speedup=2.4, speedup_interval=(2.35, 2.45)), base, thresholds))
    assert tight["speedup_vs_fp32"].outcome == "fail"
    wide = by_metric(check_baseline(make_case(speedup=2.4, speedup_interval=(1.5, 3.3)), base, thresholds))
    assert wide["speedup_vs_fp32"].outcome == "pass"


def test_missing_baseline_or_case_skips_with_how_to_create(tmp_path: Path, thresholds: Thresholds) -> None:
    (none,) = check_baseline(make_case(), None, thresholds)
    assert none.outcome == "skip" and UPDATE_HINT in none.message
    base = stored(tmp_path, make_case("fp32", speedup=None))
    (missing,) = check_baseline(make_case(), base, thresholds)
    assert (
        missing.outcome == "skip"
        and "static_int8-cpu-bs1" in missing.message
        and UPDATE_HINT in missing.message
    )
    assert missing.source == str(base.path)


def test_metric_missing_on_one_side_skips(tmp_path: Path, thresholds: Thresholds) -> None:
    base = stored(tmp_path, make_case("fp32", speedup=None))
    checks = by_metric(check_baseline(make_case("fp32", speedup=3.0), base, thresholds))
    assert checks["speedup_vs_fp32"].outcome == "skip" and "baseline" in checks["speedup_vs_fp32"].message
