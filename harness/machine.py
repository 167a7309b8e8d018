"""What the machine does to a timing: the thread count, the allocator's thresholds, the CPU's instruction tiers
(who else held the CPU meanwhile is harness/contention.py)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
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
