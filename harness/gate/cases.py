"""The gate's cases (variant x device x batch size), the parsing of what to run, and who runs what where."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.gate.metrics import REFERENCE
from harness.gate.thresholds import Thresholds
from harness.preflight import parse_batch_sizes
from harness.results import case_id
from harness.techniques import select_variants

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEVICE_CHOICES",
    "QUICK_BATCH_SIZES",
    "QUICK_VARIANTS",
    "GateCase",
    "gate_cases",
    "parse_batch_sizes",
    "planned_timing_checks",
    "resolve_devices",
    "select_variants",
    "unrunnable",
    "worker_cuda_index",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "all")
DEFAULT_BATCH_SIZES: dict[str, tuple[int, ...]] = {"cpu": (1, 32), "cuda": (1, 256)}
QUICK_VARIANTS = ("fp32", "dynamic_int8", "prune_unstructured")
QUICK_BATCH_SIZES = (1,)
"""The reduced gate, the cases marked `quick` (`-m quick`): cheap builds, every kind of check."""


@dataclass(frozen=True)
class GateCase:
    """One case of the gate: a variant on a device kind ("cpu" | "cuda") at a batch size."""

    variant: str
    device: str
    batch_size: int

    @property
    def case_id(self) -> str:
        """Return the case's id: its pytest id and its key in the baseline file."""
        return case_id(self.variant, self.device, self.batch_size)

    @property
    def quick(self) -> bool:
        """Return True when the case belongs to the reduced gate (marked `quick`: `-m quick` runs it)."""
        return self.variant in QUICK_VARIANTS and self.batch_size in QUICK_BATCH_SIZES


def resolve_devices(option: str, *, cuda_available: bool, require_gpu: bool) -> tuple[str, ...]:
    """Return the device kinds to gate: auto is cuda when present (or demanded), else cpu."""
    if option == "auto":
        return ("cuda",) if cuda_available or require_gpu else ("cpu",)
    if option == "all":
        return ("cpu", "cuda")
    if option in ("cpu", "cuda"):
        return (option,)
    raise HarnessError(f"device {option!r}: choose from {', '.join(DEVICE_CHOICES)}")


def gate_cases(
    variants: Iterable[str], devices: Iterable[str], batch_sizes: dict[str, tuple[int, ...]]
) -> list[GateCase]:
    """Return every case, device-major then variant then batch size (so one device's cases run together)."""
    return [GateCase(v, d, bs) for d in devices for v in variants for bs in batch_sizes[d]]


def unrunnable(
    case: GateCase, *, cuda_available: bool, require_gpu: bool, technique_reason: Callable[[], str | None]
) -> tuple[str, str] | None:
    """Return ("skip" | "fail", why) when the case cannot run here, or None when it can.

    A cuda case without CUDA is skipped, but fails when the run demands a GPU: a GPU job on a machine whose GPU
    vanished must go red, not green. A variant that cannot run on the device (the technique's reason) is skipped.
    """
    if case.device == "cuda" and not cuda_available:
        if require_gpu:
            return "fail", (
                f"{case.case_id}: CUDA is not available but this run demands a GPU (--require-gpu or "
                "HARNESS_REQUIRE_GPU=1): fix the runner's driver/GPU, or drop --require-gpu to skip GPU cases"
            )
        return "skip", "CUDA is not available here; run on a GPU machine (pass --require-gpu to fail instead)"
    reason = technique_reason()
    return ("skip", reason) if reason else None


def planned_timing_checks(
    cases: Iterable[GateCase], thresholds: Thresholds, machine: Mapping[str, object]
) -> int:
    """Return how many timing checks the cases can make on `machine` (an environment fingerprint): the size of the
    run's Holm family.

    fp32 has its latency against the yardstick; a variant has its speedup against the baseline and, where one
    applies on this hardware, against its floor. Cases that turn out unrunnable or unjudged only make the family
    larger than needed, which keeps its error rate below the target.
    """
    count = 0
    for case in cases:
        if case.variant == REFERENCE:
            count += 1
        else:
            floor = thresholds.floor(case.variant, case.device, case.batch_size, machine)
            count += 1 + (floor.value is not None)
    return max(count, 1)


def worker_cuda_index(worker_id: str | None, device_count: int) -> int:
    """Return the GPU index of a pytest-xdist worker: gwN -> N mod device_count; no xdist ("master") -> 0."""
    if device_count < 1:
        raise HarnessError(f"need at least one CUDA device to pin a worker to, got device_count={device_count}")
    if not worker_id or worker_id == "master":
        return 0
    match = re.fullmatch(r"gw(\d+)", worker_id)
    if match is None:
        raise HarnessError(f"unexpected pytest-xdist worker id {worker_id!r}: expected gwN or master")
    return int(match.group(1)) % device_count
