"""What the machine does to a timing: the thread count, the allocator's thresholds, and who else used the CPU."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from functools import cache

import torch

from harness.errors import HarnessError

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Blocks below this come from the heap and are reused; glibc's ceiling for the threshold (64-bit: 32 MiB)."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Freed heap memory up to this is kept, so a steady state does not return pages and fault them in again."""
BUSY_LIMIT = 0.10
"""Default share of the machine's CPU time that other processes (and the hypervisor's steal) may take while a
case is timed before its timing is not judged. Measured on the project's 2-core machine: a quiet machine shows
0.00-0.02, one competing busy loop 0.45-0.50 (see README, "When timing is judged")."""


def available_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fix_threads(threads: int) -> int:
    """Set torch's intra-op threads to `threads` and inter-op threads to 1 (where still allowed); return it.

    The gate fixes the count instead of inheriting OMP_NUM_THREADS or torch's default, so two runs time the same
    parallelism; the count is recorded in the fingerprint and in the baseline's key.
    """
    if threads < 1:
        raise HarnessError(f"the thread count must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # allowed only before the first inter-op parallel work
        torch.set_num_interop_threads(1)
    return torch.get_num_threads()


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only: musl and macOS have no mallopt
    except (OSError, AttributeError):
        return None
    return libc


def pin_allocator() -> dict[str, object]:
    """Fix glibc malloc's mmap and trim thresholds and install the byte-counting CPU allocator; return what was
    set (for the fingerprint).

    glibc moves its mmap threshold as the process frees large blocks, so whether an activation comes from reused
    heap pages or from fresh, page-faulting mmap depends on what the process did before (how many variants it
    built and compiled). Fixing the thresholds removes that history from the timings. The counting allocator
    (harness.cpu_memory) goes in before anything is timed, so every case runs on the same allocator. Elsewhere
    (musl, macOS) the thresholds are left alone and the result says so.
    """
    from harness import cpu_memory

    libc = _libc()
    counting = {"cpu_allocator": "counting" if cpu_memory.tracker() else f"default ({cpu_memory.unavailable_reason()})"}
    if libc is None:
        return {"allocator": "not pinned (no glibc mallopt)", **counting}
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return {
        "allocator": "glibc, thresholds pinned" if ok else "glibc, mallopt refused",
        "mmap_threshold_bytes": MMAP_THRESHOLD_BYTES,
        "trim_threshold_bytes": TRIM_THRESHOLD_BYTES,
        **counting,
    }


def _cpu_jiffies() -> tuple[int, int] | None:
    """Return (busy, total) jiffies of all CPUs from /proc/stat; steal counts as busy (the host took it)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest and guest_nice are inside user and nice)
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _own_jiffies() -> int | None:
    """Return this process's user + system jiffies, all its threads included."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


@dataclass
class Contention:
    """The share of the machine's CPU time others took during a `with` block (None where /proc is missing).

    others = (busy jiffies of all CPUs - this process's jiffies) / all jiffies of all CPUs. Other processes, this
    process's children (inductor's compile workers) and the hypervisor's steal all count as others.
    """

    others: float | None = None
    seconds: float = 0.0

    def __enter__(self) -> Contention:
        self._start = (_cpu_jiffies(), _own_jiffies(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        cpu0, own0, t0 = self._start
        cpu1, own1 = _cpu_jiffies(), _own_jiffies()
        self.seconds = time.perf_counter() - t0
        if cpu0 is None or cpu1 is None or own0 is None or own1 is None:
            return
        total = cpu1[1] - cpu0[1]
        if total <= 0:
            self.others = 0.0
            return
        others = (cpu1[0] - cpu0[0]) - (own1 - own0)
        self.others = min(1.0, max(0.0, others / total))


def load_average() -> float | None:
    """Return the 1-minute load average, None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# Instruction sets that decide the int8 and bf16 kernels oneDNN picks, best first.
_INT8_TIERS = (("amx_int8", "amx"), ("avx512_vnni", "vnni512"), ("avx_vnni", "vnni256"), ("avx2", "avx2"))
_BF16_TIERS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512"))


def identity_of(cpuinfo: str) -> dict[str, str]:
    """Return the CPU's vendor, family.model numbers and int8/bf16 instruction tiers from /proc/cpuinfo text.

    Two CPUs with the same marketing name but different instruction sets run different kernels (and train to
    different weights), so the baseline key carries these. Missing fields read "unknown".
    """
    info: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    int8 = next((tag for flag, tag in _INT8_TIERS if flag in flags), "none")
    bf16 = next((tag for flag, tag in _BF16_TIERS if flag in flags), "none")
    family, model = info.get("cpu family"), info.get("model")
    return {
        "cpu_vendor": {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(info.get("vendor_id", ""), "unknown"),
        "cpu_family_model": f"{family}.{model}" if family and model else "unknown",
        "cpu_int8": int8 if flags else "unknown",
        "cpu_bf16": bf16 if flags else "unknown",
    }


@cache
def cpu_identity() -> dict[str, str]:
    """Return identity_of this machine's /proc/cpuinfo ("unknown" values where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return identity_of(fh.read())
    except OSError:
        return identity_of("")
