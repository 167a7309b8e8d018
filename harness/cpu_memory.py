"""A byte-counting CPU allocator for torch, so a call's peak memory on the CPU is read like CUDA's allocator peak.

The process's resident set does not say what a call needed: glibc reuses freed heap pages, so how much a call
makes resident depends on what the process did before (how many variants it built). Instead the harness swaps in
a CPU allocator (native/cpu_allocator.cpp) that allocates exactly as torch's default one and keeps a running total
and a high-water mark of the bytes handed out: every CPU tensor, inductor's buffers and oneDNN's scratch (ideep
allocates through torch's CPU allocator) are counted, to the byte, the same in every process.

It is compiled once per machine and torch build with the system's C++ compiler against torch's own headers (about
a second) into the harness cache. Without a compiler, peak memory on the CPU is reported as not measured.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from harness.paths import cache_dir

SOURCE = "native/cpu_allocator.cpp"


@dataclass(frozen=True)
class CpuAllocatorTracker:
    """The installed counting allocator: bytes out now, and the most out at once since `reset_peak`."""

    lib: ctypes.CDLL

    def current(self) -> int:
        """Return the bytes handed out and not yet freed."""
        return int(self.lib.harness_current())

    def reset_peak(self) -> int:
        """Restart the high-water mark at the current bytes, and return them."""
        return int(self.lib.harness_reset_peak())

    def peak(self) -> int:
        """Return the most bytes out at once since the last reset_peak."""
        return int(self.lib.harness_peak())


def _compile(source: Path, target: Path) -> str | None:
    """Compile `source` into the shared library `target` (atomically); return why it failed, or None."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return "no C++ compiler (g++) on PATH"
    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(torch.compiled_with_cxx11_abi())
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    command = [
        compiler, "-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}", str(source), f"-L{torch_dir / 'lib'}", "-lc10",
        f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", tmp,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            return f"{compiler} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{compiler} could not run: {exc}"
    finally:
        Path(tmp).unlink(missing_ok=True)


@cache
def _tracker() -> tuple[CpuAllocatorTracker | None, str | None]:
    source = Path(str(resources.files("harness").joinpath(SOURCE)))
    if not hasattr(ctypes, "CDLL") or os.name != "posix":
        return None, "the counting allocator is built for POSIX systems only"
    digest = hashlib.sha256(source.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    folder = cache_dir() / "native"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"cpu_allocator-{digest}.so"
    with open(folder / "build.lock", "w") as lock:  # pytest-xdist workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            why = _compile(source, target)
            if why:
                return None, why
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"cannot load {target}: {exc}"
    for name in ("harness_current", "harness_reset_peak", "harness_peak"):
        getattr(lib, name).restype = ctypes.c_longlong
    if lib.harness_install() != 1:
        return None, "torch kept another CPU allocator of higher priority"
    return CpuAllocatorTracker(lib), None


def tracker() -> CpuAllocatorTracker | None:
    """Return the installed counting allocator (built and installed on first use), or None where it cannot be."""
    return _tracker()[0]


def unavailable_reason() -> str | None:
    """Return why the counting allocator is not available here, or None when it is."""
    return _tracker()[1]
