"""Speedup floors that know the hardware: with faked CPU flags of every int8 and bf16 tier (and faked GPUs), a floor
applies only where the hardware delivers the speedup, and says why it does not elsewhere; never a failure for the
hardware's sake, never silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _gate import make_case

from harness.errors import ResultsError
from harness.gate.cases import GateCase, planned_timing_checks
from harness.gate.checks import INFO, TimingTest, speedup_floor_test
from harness.gate.thresholds import THRESHOLDS_FILE, Thresholds, load_thresholds
from harness.machine import identity_of

FLAGS = {
    "sapphire rapids": "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile",
    "zen 4": "avx2 avx512f avx512_vnni avx512_bf16",
    "ice lake server": "avx2 avx512f avx512_vnni",
    "alder lake": "avx2 avx_vnni",
    "zen 3": "avx2 fma",
    "no flags": "",
}
"""Faked /proc/cpuinfo flags: every int8 tier (amx, vnni512, vnni256, avx2) and bf16 tier (amx, avx512, none)."""
BF16_FLOOR = {"sapphire rapids": True, "zen 4": True, "ice lake server": False, "alder lake": False, "zen 3": False,
              "no flags": False}
INT8_FLOOR = {"sapphire rapids": True, "zen 4": True, "ice lake server": True, "alder lake": True, "zen 3": False,
              "no flags": False}


def machine(kind: str) -> dict[str, str]:
    """Return the CPU identity /proc/cpuinfo with the flags of `kind` gives (harness.machine.identity_of)."""
    flags = FLAGS[kind]
    return identity_of(f"vendor_id : GenuineIntel\ncpu family : 6\nmodel : 1\nflags : {flags}\n" if flags else "")


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    return load_thresholds()


@pytest.mark.parametrize("kind", list(FLAGS))
def test_the_bf16_floor_applies_only_on_a_cpu_with_bf16_instructions(thresholds: Thresholds, kind: str) -> None:
    floor = thresholds.floor("bf16", "cpu", 32, machine(kind))
    if BF16_FLOOR[kind]:
        assert floor.value == 1.2 and "speedup_floor.bf16.cpu.large" in floor.why
    else:
        assert floor.value is None
        assert "no bf16 instructions" in floor.why or "unknown" in floor.why


@pytest.mark.parametrize("kind", list(FLAGS))
def test_the_static_int8_floor_applies_only_on_vnni_or_amx(thresholds: Thresholds, kind: str) -> None:
    for variant in ("static_int8", "fastest_cpu"):
        floor = thresholds.floor(variant, "cpu", 1, machine(kind))
        assert (floor.value == 3.0) == INT8_FLOOR[kind], (variant, floor)
        if not INT8_FLOOR[kind]:
            assert "VNNI or AMX" in floor.why


@pytest.mark.parametrize("kind", list(FLAGS))
def test_floors_that_rest_on_no_instruction_set_apply_everywhere(thresholds: Thresholds, kind: str) -> None:
    assert thresholds.floor("compile", "cpu", 32, machine(kind)).value == 1.1
    assert thresholds.floor("dynamic_int8", "cpu", 1, machine(kind)).value == 0.85


@pytest.mark.parametrize(("capability", "applies"), [("9.0", True), ("8.0", True), ("7.5", False), (None, False)])
def test_cuda_floors_need_the_compute_capability_of_their_tensor_cores(
    thresholds: Thresholds, capability: str | None, applies: bool
) -> None:
    gpu = {"gpu_capability": capability}
    floor = thresholds.floor("bf16", "cuda", 256, gpu)
    assert (floor.value == 1.5) == applies, floor
    if not applies:
        assert "bf16 tensor cores" in floor.why
    assert thresholds.floor("compile", "cuda:1", 256, gpu).value == 1.2  # no tensor-core format: everywhere


def written(tmp_path: Path, variant: str, cpu: dict[str, object]) -> Path:
    """Return a copy of the shipped thresholds file with `variant`'s CPU floors replaced by `cpu`."""
    document = json.loads(THRESHOLDS_FILE.read_text())
    document["speedup_floor"][variant]["cpu"] = cpu
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(("kind", "expected"), [
    ("sapphire rapids", 3.0), ("ice lake server", 2.8), ("zen 3", 1.6), ("alder lake", None), ("no flags", None)
])
def test_a_floor_written_per_tier_takes_this_cpus_tier(tmp_path: Path, kind: str, expected: float | None) -> None:
    path = written(tmp_path, "static_int8", {"bs1": {"amx": 3.0, "vnni512": 2.8, "avx2": 1.6, "none": None},
                                             "large": None})
    floor = load_thresholds(path).floor("static_int8", "cpu", 1, machine(kind))
    assert floor.value == expected, floor
    if kind == "alder lake":
        assert "int8 tier vnni256" in floor.why and "is set for amx, vnni512, avx2, none" in floor.why
    if kind == "no flags":
        assert "unknown" in floor.why


@pytest.mark.parametrize(("cpu", "message"), [
    ({"bs1": {"amx": 3.0, "avx512": 2.0}, "large": None}, "unknown int8 tiers ['avx512']"),
    ({"bs1": {}, "large": None}, "unknown int8 tiers []"),
    ({"bs1": {"amx": 0}, "large": None}, "positive speedup"),
])
def test_a_bad_per_tier_floor_is_refused(tmp_path: Path, cpu: dict[str, object], message: str) -> None:
    with pytest.raises(ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_thresholds(written(tmp_path, "static_int8", cpu))


def test_a_per_tier_floor_needs_one_instruction_family(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="rest on no CPU instruction family"):
        load_thresholds(written(tmp_path, "compile", {"bs1": {"amx": 2.0}, "large": 1.1}))


def test_a_case_without_its_floor_is_measured_shown_and_never_failed(thresholds: Thresholds) -> None:
    """bf16 at batch 32 on a CPU without bf16 instructions: 0.5x, half of fp32's speed, and no failure."""
    case = make_case("bf16", batch_size=32, speedup=0.5)
    check = speedup_floor_test(case, thresholds, 0.03, 4, machine("zen 3"))
    assert not isinstance(check, TimingTest) and check.outcome == INFO and not check.failed
    assert check.value == 0.5 and check.message.startswith("no floor: this CPU has no bf16 instructions")
    capable = speedup_floor_test(case, thresholds, 0.03, 4, machine("sapphire rapids"))
    assert isinstance(capable, TimingTest) and capable.limit == 1.2 and capable.shift.p_worse < 1e-4


def test_the_holm_family_counts_only_the_floors_this_hardware_has(thresholds: Thresholds) -> None:
    cases = [GateCase(v, "cpu", bs) for v in ("fp32", "bf16", "static_int8") for bs in (1, 32)]
    # fp32: 2 latency checks; bf16, static_int8: 2 speedups each; floors: bf16 large, static_int8 bs1 and large
    assert planned_timing_checks(cases, thresholds, machine("sapphire rapids")) == 2 + 4 + 3
    assert planned_timing_checks(cases, thresholds, machine("zen 3")) == 2 + 4
    assert planned_timing_checks(cases, thresholds, machine("ice lake server")) == 2 + 4 + 2
