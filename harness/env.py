"""The environment a run measured on (hardware, versions, flags, git) and the key naming its baselines."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.machine import cpu_identity

_SUBPROCESS_TIMEOUT_S = 5.0
MAX_KEY_LENGTH = 80


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """Return the stripped stdout of `cmd`, or None if it is missing, fails or times out."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, else platform.processor(), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_state(cwd: Path) -> tuple[str | None, bool | None]:
    """Return (commit, dirty) of the git checkout at `cwd`; (None, None) outside one or before a commit."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=cwd)
    if not commit:
        return None, None
    status = _run(["git", "status", "--porcelain"], cwd=cwd)
    return commit, (None if status is None else bool(status))


def _gpu_fields() -> dict[str, object]:
    fields: dict[str, object] = {
        "gpu_name": None,
        "gpu_count": 0,
        "gpu_capability": None,
        "gpu_multiprocessors": None,
        "gpu_memory_bytes": None,
        "gpu_driver": None,
    }
    if not torch.cuda.is_available():
        return fields
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    fields.update(
        gpu_name=str(props.name),
        gpu_count=torch.cuda.device_count(),
        gpu_capability=f"{props.major}.{props.minor}",
        gpu_multiprocessors=int(props.multi_processor_count),
        gpu_memory_bytes=int(props.total_memory),
    )
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        fields["gpu_driver"] = out.splitlines()[0].strip() if out else None
    return fields


def _torchvision_version() -> str | None:
    """Return torchvision's version from its package metadata (importing it would cost seconds), or None."""
    loaded = sys.modules.get("torchvision")
    if loaded is not None:
        return str(getattr(loaded, "__version__", None))
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint() -> dict[str, object]:
    """Return a JSON-ready description of this machine and software (the hostname is left out on purpose).

    Keys: torch, torchvision, python, platform, cuda_available, cuda_version, cudnn_version, gpu_name,
    gpu_count, gpu_capability, gpu_multiprocessors, gpu_memory_bytes, gpu_driver, cpu_model, cpu_vendor,
    cpu_family_model, cpu_int8, cpu_bf16, cpu_count, torch_threads, xdist_workers, tf32_matmul, tf32_cudnn,
    cudnn_benchmark, float32_matmul_precision, git_commit, git_dirty.
    """
    cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    commit, dirty = _git_state(Path.cwd())
    return {
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn_version,
        **_gpu_fields(),
        "cpu_model": cpu_model(),
        **cpu_identity(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "xdist_workers": int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


# Marketing words that make CPU names long without telling models apart.
_CPU_NOISE = re.compile(
    r"\((r|tm|c)\)|\b(cpu|processor|\d+-core)\b|\bwith radeon.*$|@\s*[\d.]+\s*[gm]hz",
    re.IGNORECASE,
)


def slugify(text: str) -> str:
    """Return `text` lowercased with every run of characters outside [a-z0-9.] turned into one '-'."""
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower())
    slug = re.sub(r"\.{2,}", ".", slug)
    return slug.strip("-.")


def _major_minor(version: object) -> str | None:
    match = re.match(r"\s*(\d+)\.(\d+)", str(version)) if version is not None else None
    return f"{match.group(1)}.{match.group(2)}" if match else None


def env_key(fp: Mapping[str, object] | None = None, device: str = "cpu") -> str:
    """Return a short, stable, filesystem-safe key naming the baselines of this hardware and software.

    Built only from the device kind, the GPU name (cuda) or, on cpu, the CPU model, its family.model numbers and
    the int8/bf16 instruction tiers (machine.cpu_identity) and the torch thread count, torch major.minor and, on
    cuda, CUDA major.minor; e.g. "cpu-intel-xeon-6.207-i8amx-bf16amx-2t-torch2.14" or
    "cuda-nvidia-h200-torch2.14-cu13.0". Git state and patch versions do not enter it. The key matches
    [a-z0-9.-]+ and is at most 80 characters: a longer one is cut and ends in 8 hex digits of the sha1 of
    the whole key.
    """
    fp = fingerprint() if fp is None else fp
    kind = str(device).split(":", 1)[0].strip().lower()
    torch_mm = _major_minor(fp.get("torch"))
    if torch_mm is None:
        raise HarnessError(
            f"the fingerprint has no usable 'torch' version ({fp.get('torch')!r}); pass fingerprint()"
        )
    if kind == "cpu":
        model = _CPU_NOISE.sub(" ", str(fp.get("cpu_model") or ""))
        threads = fp.get("torch_threads")
        family = str(fp.get("cpu_family_model") or "unknown")
        isa = f"i8{fp.get('cpu_int8') or 'unknown'}-bf16{fp.get('cpu_bf16') or 'unknown'}"
        threads_part = f"{threads}t" if threads else ""
        parts = ["cpu", slugify(model) or "unknown-cpu", family, isa, threads_part, f"torch{torch_mm}"]
    elif kind == "cuda":
        gpu = slugify(str(fp.get("gpu_name") or ""))
        if not gpu:
            raise HarnessError(
                "env_key(device='cuda') needs a fingerprint with a 'gpu_name'; this one has none "
                "(CUDA not available?); use device='cpu' or run on the GPU machine"
            )
        cuda_mm = _major_minor(fp.get("cuda_version"))
        parts = ["cuda", gpu, f"torch{torch_mm}", f"cu{cuda_mm}" if cuda_mm else "cu-none"]
    else:
        raise HarnessError(f"unknown device {device!r} for env_key; use 'cpu' or 'cuda'")
    key = slugify("-".join(p for p in parts if p))
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        key = key[: MAX_KEY_LENGTH - 9].rstrip("-.") + "-" + digest
    return key


def machine_of_key(key: str) -> dict[str, object]:
    """Return what an env key tells of the hardware's instruction tiers ({"cpu_int8", "cpu_bf16"} of a CPU key, else
    nothing): enough to say which hardware-dependent speedup floors applied where a baseline was recorded."""
    match = re.search(r"-i8([a-z0-9]+)-bf16([a-z0-9]+)-", key)
    return {"cpu_int8": match.group(1), "cpu_bf16": match.group(2)} if match else {}
