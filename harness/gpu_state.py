"""What the GPU was doing while a case was timed, from NVML: clocks, clock-event reasons, heat, power, other users.

A GPU's timing is only as good as the state it ran in: a card capped for power or heat runs its SMs slower for part
of the window, and another process's kernels share its SMs. `GpuWatch` reads the device before and after the timed
window (`nvidia-ml-py`, the optional extra `pip install 'resnet-gate[gpu]'`):

- SM and memory clocks, and whether the clocks are pinned (application clocks set away from their default, or the
  clock-event reason "applications clocks setting", which locked clocks also raise);
- the clock-event (throttle) reasons active at either end, and the time the driver's power and thermal policies
  held the clocks down during the window (`nvmlDeviceGetViolationStatus`, cumulative nanoseconds: a cap that came and
  went inside the window still shows);
- temperature, power draw against the enforced limit, persistence and MIG mode, and the compute processes on the
  device.

The timing is UNJUDGED (`GpuState.unjudged`) when the clocks were held down for power or heat during the window, or
another process had the device. Inside a container NVML may report host process ids, which do not match this
process's: then one of the processes listed is taken to be this one. Without NVML (not installed, no driver, no
permission) the state says "not recorded" and why, and the timing is judged on the rest of the evidence.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from harness.contention import Proc

POWER_REASONS = {0x4: "software power cap", 0x80: "hardware power brake"}
THERMAL_REASONS = {0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown"}
SLOWDOWN_REASONS = {0x8: "hardware slowdown (power or heat)"}
PINNED_REASON = 0x2
"""nvmlClocksEventReasonApplicationsClocksSetting: the clocks are held at a set value (application or locked clocks)."""
PERF_POLICY_POWER, PERF_POLICY_THERMAL = 0, 1
CLOCK_SM, CLOCK_MEM = 1, 2
VIOLATION_MIN_NS = 1_000_000
"""Power or thermal capping shorter than this (1 ms) over a window is counter noise, not a throttled timing."""


@dataclass(frozen=True)
class Snapshot:
    """One reading of the device (None: NVML did not give it on this device)."""

    sm_mhz: int | None = None
    mem_mhz: int | None = None
    app_sm_mhz: int | None = None
    default_app_sm_mhz: int | None = None
    reasons: int = 0
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    persistence: bool | None = None
    mig: bool | None = None
    processes: tuple[tuple[int, int | None], ...] = ()
    """(pid, GPU memory bytes or None) of each compute process."""
    power_violation_ns: int | None = None
    thermal_violation_ns: int | None = None


@dataclass(frozen=True)
class GpuState:
    """The device's state over a timed window, or why it was not recorded."""

    recorded: bool
    why: str = ""
    name: str = ""
    before: Snapshot | None = None
    after: Snapshot | None = None
    own_pids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def clocks_pinned(self) -> bool | None:
        """Return whether the clocks were held at a set value (None: not recorded)."""
        if not self.recorded or self.before is None:
            return None
        snap = self.before
        moved = snap.app_sm_mhz is not None and snap.default_app_sm_mhz is not None and (
            snap.app_sm_mhz != snap.default_app_sm_mhz)
        return bool(snap.reasons & PINNED_REASON) or moved

    def throttled(self) -> list[str]:
        """Return what held the clocks down for power or heat during the window (empty: nothing)."""
        if not self.recorded or self.before is None or self.after is None:
            return []
        found = []
        for label, start, end in (
            ("power", self.before.power_violation_ns, self.after.power_violation_ns),
            ("thermal", self.before.thermal_violation_ns, self.after.thermal_violation_ns),
        ):
            if start is not None and end is not None and end - start >= VIOLATION_MIN_NS:
                found.append(f"the {label} policy held the clocks down for {(end - start) / 1e6:.0f} ms")
        reasons = self.before.reasons | self.after.reasons
        for table in (POWER_REASONS, THERMAL_REASONS, SLOWDOWN_REASONS):
            found += [f"clock-event reason: {text}" for bit, text in table.items() if reasons & bit]
        return found

    def others(self) -> list[int]:
        """Return the pids of other compute processes on the device during the window."""
        if not self.recorded or self.before is None or self.after is None:
            return []
        pids = {pid for snap in (self.before, self.after) for pid, _ in snap.processes}
        own = set(self.own_pids)
        if pids & own:
            return sorted(pids - own)
        # A container's NVML may list host pids: one of them is this process, the rest are others.
        return sorted(pids)[1:] if len(pids) > 1 else []

    @property
    def unjudged(self) -> str | None:
        """Return why the window's timing cannot be judged, or None when the GPU ran undisturbed (or unrecorded)."""
        why = []
        throttled = self.throttled()
        if throttled:
            why.append("the GPU throttled: " + "; ".join(throttled))
        others = self.others()
        if others:
            why.append(f"another process used the GPU (pid {', '.join(map(str, others))})")
        return "; ".join(why) or None

    def describe(self) -> str:
        """Return one line for the record and the report."""
        if not self.recorded:
            return f"GPU state not recorded: {self.why}"
        snap = self.before or Snapshot()
        after = self.after or snap
        power = "power ?"
        if after.power_w is not None and after.power_limit_w is not None:
            power = f"{after.power_w:.0f}/{after.power_limit_w:.0f} W"
        return (
            f"{self.name}: SM {snap.sm_mhz}->{after.sm_mhz} MHz, memory {snap.mem_mhz} MHz, clocks "
            f"{'pinned' if self.clocks_pinned else 'not pinned'}, {after.temperature_c} C, {power}, persistence "
            f"{_on(snap.persistence)}, MIG {_on(snap.mig)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form kept in the case's record: the readings, what they mean, and the verdict."""
        return {
            **asdict(self),
            "clocks_pinned": self.clocks_pinned,
            "throttled": self.throttled(),
            "other_pids": self.others(),
            "unjudged": self.unjudged,
            "summary": self.describe(),
        }


def _on(flag: bool | None) -> str:
    return "?" if flag is None else "on" if flag else "off"


def load_nvml() -> ModuleType | str:
    """Return the started pynvml module, or why NVML is not there."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return "nvidia-ml-py is not installed (pip install 'resnet-gate[gpu]')"
    try:
        nvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - NVMLError and its subclasses, or a missing libnvidia-ml
        return f"NVML could not start: {err}"
    return nvml


def _call(nvml: ModuleType, name: str, *args: Any) -> Any:
    """Return nvml.name(*args), or None where the device or driver does not support it."""
    fn = getattr(nvml, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends: the reading is absent, not fatal
        return None


def snapshot(nvml: ModuleType, handle: Any) -> Snapshot:
    """Return one reading of the device."""
    reasons = _call(nvml, "nvmlDeviceGetCurrentClocksEventReasons", handle)
    if reasons is None:
        reasons = _call(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    power = _call(nvml, "nvmlDeviceGetPowerUsage", handle)
    limit = _call(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)
    mig = _call(nvml, "nvmlDeviceGetMigMode", handle)
    persistence = _call(nvml, "nvmlDeviceGetPersistenceMode", handle)
    processes = _call(nvml, "nvmlDeviceGetComputeRunningProcesses", handle) or []
    return Snapshot(
        sm_mhz=_call(nvml, "nvmlDeviceGetClockInfo", handle, CLOCK_SM),
        mem_mhz=_call(nvml, "nvmlDeviceGetClockInfo", handle, CLOCK_MEM),
        app_sm_mhz=_call(nvml, "nvmlDeviceGetApplicationsClock", handle, CLOCK_SM),
        default_app_sm_mhz=_call(nvml, "nvmlDeviceGetDefaultApplicationsClock", handle, CLOCK_SM),
        reasons=int(reasons or 0),
        temperature_c=_call(nvml, "nvmlDeviceGetTemperature", handle, 0),
        power_w=None if power is None else power / 1000.0,
        power_limit_w=None if limit is None else limit / 1000.0,
        persistence=None if persistence is None else bool(persistence),
        mig=None if not mig else bool(mig[0]),
        processes=tuple((int(p.pid), getattr(p, "usedGpuMemory", None)) for p in processes),
        power_violation_ns=_violation(nvml, handle, PERF_POLICY_POWER),
        thermal_violation_ns=_violation(nvml, handle, PERF_POLICY_THERMAL),
    )


def _violation(nvml: ModuleType, handle: Any, policy: int) -> int | None:
    found = _call(nvml, "nvmlDeviceGetViolationStatus", handle, policy)
    return None if found is None else int(found.violationTime)


def own_family() -> tuple[int, ...]:
    """Return this process and its live descendants (a re-measuring child, a compile worker), from /proc."""
    me = os.getpid()
    return tuple(sorted([me, *Proc().descendants(me)]))


def device_handle(nvml: ModuleType, index: int, uuid: str | None) -> Any:
    """Return NVML's handle of the CUDA device: by its UUID when torch gives one (CUDA_VISIBLE_DEVICES renumbers
    devices, NVML does not), else by index."""
    if uuid:
        text = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        found = _call(nvml, "nvmlDeviceGetHandleByUUID", text)
        if found is not None:
            return found
    return nvml.nvmlDeviceGetHandleByIndex(index)


class GpuWatch:
    """Read the GPU's state around a `with` block: `state` is a GpuState once the block ends."""

    def __init__(self, index: int, uuid: str | None = None, nvml: ModuleType | str | None = None) -> None:
        self.index, self.uuid = index, uuid
        self._nvml = load_nvml() if nvml is None else nvml
        self._handle: Any = None
        self._name = ""
        self._before: Snapshot | None = None
        self.state: GpuState | None = None

    def __enter__(self) -> GpuWatch:
        if isinstance(self._nvml, str):
            self.state = GpuState(recorded=False, why=self._nvml)
            return self
        try:
            self._handle = device_handle(self._nvml, self.index, self.uuid)
        except Exception as err:  # noqa: BLE001 - any NVML error: the state is not recorded, and says why
            self.state = GpuState(recorded=False, why=f"NVML has no handle for CUDA device {self.index}: {err}")
            return self
        name = _call(self._nvml, "nvmlDeviceGetName", self._handle)
        self._name = name.decode() if isinstance(name, bytes) else str(name or f"cuda:{self.index}")
        self._before = snapshot(self._nvml, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state is not None or isinstance(self._nvml, str):
            return
        after = snapshot(self._nvml, self._handle)
        self.state = GpuState(recorded=True, name=self._name, before=self._before, after=after,
                              own_pids=own_family())


def watch(device: Any, nvml: ModuleType | str | None = None) -> GpuWatch | None:
    """Return a GpuWatch for a torch CUDA device (its UUID from torch), None for any other device."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return GpuWatch(index, None if uuid is None else str(uuid), nvml)
