"""The GPU's state around a timed window (harness/gpu_state.py), driven by a fake NVML: throttled, pinned, unpinned,
shared and missing; a throttled or shared window leaves a CUDA case's timing UNJUDGED."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from _gate import ENVIRONMENT, make_case
from _gate import gate_settings as settings

from harness.gate.runner import Gate
from harness.gpu_state import GpuWatch, load_nvml


class FakeNvml(ModuleType):
    """pynvml as far as gpu_state uses it; each reading is a list popped per call (the last one repeats)."""

    class NVMLError(Exception):
        pass

    def __init__(self, **readings: Any) -> None:
        super().__init__("pynvml")
        self.readings = {
            "reasons": [0], "power_ns": [0], "thermal_ns": [0], "sm": [1980], "app": [1980], "default_app": [1980],
            "processes": [[os.getpid()]], "temperature": [45], "power_mw": [120_000], "limit_mw": [700_000],
            **readings,
        }
        self.unsupported: set[str] = set()

    def _next(self, key: str) -> Any:
        values = self.readings[key]
        return values.pop(0) if len(values) > 1 else values[0]

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return f"handle:{uuid}"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return f"handle:{index}"

    def nvmlDeviceGetName(self, handle: str) -> str:  # noqa: N802
        return "NVIDIA H200"

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:  # noqa: N802
        return int(self._next("reasons"))

    def nvmlDeviceGetViolationStatus(self, handle: str, policy: int) -> SimpleNamespace:  # noqa: N802
        if "violation" in self.unsupported:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(referenceTime=0, violationTime=self._next("power_ns" if policy == 0 else "thermal_ns"))

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:  # noqa: N802
        return int(self._next("sm")) if clock == 1 else 2619

    def nvmlDeviceGetApplicationsClock(self, handle: str, clock: int) -> int:  # noqa: N802
        return int(self._next("app"))

    def nvmlDeviceGetDefaultApplicationsClock(self, handle: str, clock: int) -> int:  # noqa: N802
        return int(self._next("default_app"))

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:  # noqa: N802
        return int(self._next("temperature"))

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:  # noqa: N802
        return int(self._next("power_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:  # noqa: N802
        return int(self._next("limit_mw"))

    def nvmlDeviceGetPersistenceMode(self, handle: str) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:  # noqa: N802
        return [0, 0]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:  # noqa: N802
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in self._next("processes")]


def watched(nvml: FakeNvml) -> Any:
    with GpuWatch(0, "1234-abcd", nvml) as watch:
        pass
    assert watch.state is not None
    return watch.state


def test_an_idle_unpinned_gpu_is_recorded_and_judged() -> None:
    state = watched(FakeNvml())
    assert state.recorded and state.name == "NVIDIA H200" and state.unjudged is None
    assert state.clocks_pinned is False and state.throttled() == [] and state.others() == []
    record = state.to_dict()
    assert record["before"]["sm_mhz"] == 1980 and record["after"]["power_limit_w"] == 700.0
    assert "clocks not pinned" in record["summary"] and "persistence on, MIG off" in record["summary"]


@pytest.mark.parametrize(
    "readings",
    [{"app": [1500], "default_app": [1980]}, {"reasons": [0x2]}],
    ids=["application-clocks", "locked-clocks-reason"],
)
def test_pinned_clocks_are_recorded_and_not_a_reason_to_skip(readings: dict[str, Any]) -> None:
    state = watched(FakeNvml(**readings))
    assert state.clocks_pinned is True and state.unjudged is None and "clocks pinned" in state.describe()


@pytest.mark.parametrize(
    ("readings", "says"),
    [
        ({"power_ns": [5_000_000_000, 5_400_000_000]}, "the power policy held the clocks down for 400 ms"),
        ({"thermal_ns": [0, 80_000_000]}, "the thermal policy held the clocks down for 80 ms"),
        ({"reasons": [0, 0x4]}, "clock-event reason: software power cap"),
        ({"reasons": [0x40]}, "clock-event reason: hardware thermal slowdown"),
        ({"reasons": [0x8, 0]}, "clock-event reason: hardware slowdown"),
    ],
    ids=["power-window", "thermal-window", "power-cap-at-end", "hw-thermal", "hw-slowdown-at-start"],
)
def test_a_throttled_window_is_unjudged_with_what_held_it_down(readings: dict[str, Any], says: str) -> None:
    state = watched(FakeNvml(**readings))
    assert state.unjudged is not None and state.unjudged.startswith("the GPU throttled: ") and says in state.unjudged


def test_counter_noise_below_a_millisecond_is_not_throttling() -> None:
    assert watched(FakeNvml(power_ns=[1000, 1000 + 999_999])).unjudged is None


def test_another_process_on_the_gpu_makes_it_unjudged_and_our_own_children_do_not() -> None:
    me = os.getpid()
    shared = watched(FakeNvml(processes=[[me], [me, 999_999]]))
    assert shared.others() == [999_999] and "another process used the GPU (pid 999999)" in (shared.unjudged or "")
    assert watched(FakeNvml(processes=[[me], []])).unjudged is None


def test_host_pids_in_a_container_count_one_of_them_as_this_process() -> None:
    assert watched(FakeNvml(processes=[[4_000_001]])).unjudged is None  # only this process, under a host pid
    two = watched(FakeNvml(processes=[[4_000_001, 4_000_002]]))
    assert two.others() == [4_000_002] and two.unjudged is not None


def test_readings_a_device_does_not_support_are_absent_not_fatal() -> None:
    nvml = FakeNvml()
    nvml.unsupported.add("violation")
    state = watched(nvml)
    assert state.recorded and state.before is not None and state.before.power_violation_ns is None
    assert state.unjudged is None


def test_without_nvml_the_state_says_not_recorded_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    why = load_nvml()
    assert isinstance(why, str) and "nvidia-ml-py is not installed" in why
    state = watched(why)  # type: ignore[arg-type]
    assert not state.recorded and state.unjudged is None
    assert state.describe() == f"GPU state not recorded: {why}" and state.to_dict()["clocks_pinned"] is None


def test_nvml_that_cannot_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeNvml()

    def fail() -> None:
        raise FakeNvml.NVMLError("Driver Not Loaded")

    broken.nvmlInit = fail  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert load_nvml() == "NVML could not start: Driver Not Loaded"


def test_a_cuda_case_timed_on_a_throttled_gpu_has_its_timing_unjudged(tmp_path: Path) -> None:
    gate = Gate(settings(tmp_path / "baselines"))
    gate._environment = dict(ENVIRONMENT)
    case = make_case(device="cuda")
    case.extra["gpu_state"] = watched(FakeNvml(power_ns=[0, 300_000_000])).to_dict()
    why = gate.timing_unjudged(case)
    assert why is not None and "the power policy held the clocks down for 300 ms" in why
    assert "NVIDIA H200" in why and "run the gate on an idle GPU" in why
    case.extra["gpu_state"] = watched(FakeNvml()).to_dict()
    assert gate.timing_unjudged(case) is None
    assert gate.timing_unjudged(make_case(device="cuda")) is None  # no state recorded: judged on the rest
