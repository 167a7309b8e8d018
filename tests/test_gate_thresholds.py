"""The reviewed thresholds file: every technique has an allowance, floors resolve, bad files are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from _gate import ENVIRONMENT
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ResultsError, TechniqueError
from harness.gate.metrics import METRIC_NAMES
from harness.gate.thresholds import THRESHOLDS_FILE, Thresholds, load_thresholds
from harness.techniques import NAMES, PRESETS


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    """The reviewed thresholds file of the repository."""
    return load_thresholds()


def document() -> dict[str, Any]:
    return json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))


def test_thresholds_file_is_canonical_json_with_every_technique_and_metric(thresholds: Thresholds) -> None:
    text = THRESHOLDS_FILE.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert set(thresholds.allowed_top1_drop) == set(NAMES)
    assert set(thresholds.tolerances) == set(METRIC_NAMES)
    assert 0 < thresholds.timing.family_alpha <= 0.05 and thresholds.timing.prior_dof > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
def test_allowance_of_a_combination_is_the_sum(names: list[str]) -> None:
    t = load_thresholds()
    total = math.fsum(t.allowed_drop(n) for n in names)
    assert t.allowed_drop("+".join(names)) == pytest.approx(total, abs=1e-12)
    assert t.allowed_drop("+".join(reversed(names))) == pytest.approx(total, abs=1e-12)


def test_allowance_of_presets_and_unknown_techniques(thresholds: Thresholds) -> None:
    assert thresholds.allowed_drop("fp32") == 0.0
    assert thresholds.allowed_drop("prune_structured+static_int8") == pytest.approx(0.03)
    assert thresholds.allowed_drop("fastest_cpu") == thresholds.allowed_drop(PRESETS["fastest_cpu"])
    with pytest.raises(TechniqueError, match=r"unknown technique 'int3'.*static_int8"):
        thresholds.allowed_drop("bf16+int3")


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=1024))
def test_floors_follow_the_batch_regime(batch_size: int) -> None:
    t = load_thresholds()
    floor = t.floor("static_int8", "cpu", batch_size, ENVIRONMENT).value
    expected = 3.0 if batch_size == 1 else 2.0 if batch_size >= t.large_batch_min else None
    assert floor == expected
    assert t.floor("static_int8", "cuda:0", batch_size, ENVIRONMENT).value is None
    assert t.spread_regime(batch_size) == ("large" if batch_size >= t.large_batch_min else "small")


def test_floor_lookup_by_preset_by_technique_set_and_device(thresholds: Thresholds) -> None:
    gpu = {"gpu_capability": "9.0"}
    assert thresholds.floor("fastest_cpu", "cpu", 32, ENVIRONMENT).value == 2.5
    assert thresholds.floor("static_int8+prune_structured", "cpu", 1, ENVIRONMENT).value == 3.0
    assert thresholds.floor("bf16+channels_last", "cuda:1", 64, gpu).value == 1.5
    absent = thresholds.floor("bf16+compile", "cpu", 32, ENVIRONMENT)
    assert absent.value is None and "no speedup floor for bf16+compile" in absent.why


def test_tolerances_per_device_and_min_change(thresholds: Thresholds) -> None:
    assert thresholds.tolerance("size_bytes", "cpu") == 0.0
    assert thresholds.min_change("peak_memory_bytes") == 1048576 and thresholds.min_change("size_bytes") == 0.0
    assert thresholds.prior_spread("cuda:0", 256) == thresholds.timing.prior_spread["cuda"]["large"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(schema_version=6), "newer harness"),
        (lambda d: d.update(schema_version=1), "no migration"),
        (lambda d: d["baseline"].pop("size_bytes"), r"missing keys \['size_bytes'\]"),
        (lambda d: d["baseline"]["size_bytes"].update(slack=1), "takes a 'tolerance'"),
        (lambda d: d["baseline"]["peak_memory_bytes"].update(tolerance={"cpu": 0.1}), r"missing keys \['cuda'\]"),
        (lambda d: d["baseline"]["top1"].update(tolerance=float("inf")), "not JSON|finite"),
        (lambda d: d["allowed_top1_drop"].update(int3=0.1), "unknown technique 'int3'"),
        (lambda d: d["allowed_top1_drop"].pop("bf16"), "no entry for"),
        (lambda d: d["allowed_top1_drop"].update(bf16=1.5), "fraction"),
        (lambda d: d["speedup_floor"]["bf16"]["cpu"].pop("bs1"), "exactly the regimes"),
        (lambda d: d["speedup_floor"].update({"bf16+channels_last": {}}), "same techniques"),
        (lambda d: d["speedup_floor"]["bf16"]["cpu"].update(bs1=0), "or null for no floor"),
        (lambda d: d["timing"].update(family_alpha=0), "strictly between 0 and 1"),
        (lambda d: d["timing"].update(prior_dof=0), "prior_dof must be positive"),
        (lambda d: d["timing"]["prior_spread"].pop("cuda"), r"missing keys \['cuda'\]"),
        (lambda d: d["timing"].pop("busy_limit"), r"missing keys \['busy_limit'\]"),
        (lambda d: d.update(stale_fails=True), r"unknown keys \['stale_fails'\]"),
        (lambda d: d.update(large_batch_min=1), "integer >= 2"),
        (lambda d: d.pop("history"), r"missing keys \['history'\]"),
        (lambda d: d["ab"].pop("process_sd"), r"missing keys \['process_sd'\]"),
        (lambda d: d["ab"].update(tolerance=0), "fraction"),
        (lambda d: d["ab"]["process_sd"].pop("cuda"), r"missing keys \['cuda'\]"),
        (lambda d: d["ab"].update(process_dof=0.5), "process_dof must be at least 1"),
        (lambda d: d["history"].pop("penalty"), r"missing keys \['penalty'\]"),
        (lambda d: d["history"].update(window=2), "window must be an integer >= 3"),
        (lambda d: d["history"].update(window=20.5), "window must be an integer"),
        (lambda d: d["history"].update(z=0), "z and penalty must be positive"),
        (lambda d: d["history"].update(drift_limit=1.5), "fraction"),
        (lambda d: d["history"].update(smooth=30), "must not exceed the window"),
        (lambda d: d["history"].update(alpha=0.05), r"unknown keys \['alpha'\]"),
    ],
)
def test_bad_thresholds_are_refused(tmp_path: Path, edit: Any, match: str) -> None:
    doc = document()
    edit(doc)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ResultsError, match=match):
        load_thresholds(path)


def test_missing_or_corrupt_thresholds_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        load_thresholds(tmp_path / "nope.json")
    bad = tmp_path / "t.json"
    bad.write_text('{"schema_version": 2,', encoding="utf-8")
    with pytest.raises(ResultsError, match="truncated or not JSON"):
        load_thresholds(bad)


def test_a_version_2_file_gets_the_shipped_history_and_ab_rules(tmp_path: Path) -> None:
    shipped = json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))
    old = {key: value for key, value in shipped.items() if key not in ("history", "ab")} | {"schema_version": 2}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert load_thresholds(path).history == load_thresholds().history  # the migration's numbers are the file's
    assert load_thresholds(path).ab == load_thresholds().ab


def test_a_version_4_file_gets_the_shipped_waiting_for_a_quiet_machine(tmp_path: Path) -> None:
    shipped = json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))
    timing = {k: v for k, v in shipped["timing"].items() if k not in ("busy_wait_s", "busy_retries")}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({**shipped, "timing": timing, "schema_version": 4}), encoding="utf-8")
    assert load_thresholds(path).timing == load_thresholds().timing  # the migration's numbers are the file's
