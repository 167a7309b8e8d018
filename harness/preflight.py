"""Checks a command makes on its arguments before any work: a bad one is a HarnessError that says the fix.

Each function checks one kind of argument (an output file, an input file, a number's range, a device, a batch-size
list) without loading data or building a model, so a run that would fail at its end fails at its start instead,
having written nothing. The CLI and the gate's pytest plugin share them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from harness.errors import HarnessError

SEED_MAX = 2**32 - 1
"""numpy's RandomState (the digits split) takes seeds up to 2**32 - 1."""


def output_file(path: Path, flag: str, *, example: str = "results.json") -> Path:
    """Return `path` when a file can be written there: not a folder, its folder creatable and writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise HarnessError(f"{flag} {path} is a folder; give a file path, e.g. {path / example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise HarnessError(f"{flag} {path} exists and is not writable; fix its permissions or choose another path")
    _writable_folder(path.parent, f"{flag} {path}")
    return path


def output_folder(path: Path, flag: str) -> Path:
    """Return `path` when files can be written into it: a folder (or creatable as one) that is writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{flag} {path} is a file, not a folder; give a folder path")
    _writable_folder(path, f"{flag} {path}")
    return path


def _writable_folder(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists():  # the nearest existing ancestor decides whether the folder can be made
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(f"{what}: {existing} is a file, so no folder can be made under it; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"{what}: cannot write in {existing} (permission denied); choose a writable place")


def input_file(path: Path, flag: str, fix: str) -> Path:
    """Return `path` when it is a readable file; else a HarnessError naming it and `fix`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise HarnessError(f"{flag} {path} is a folder, not a file; {fix}")
    if not path.is_file():
        raise HarnessError(f"{flag} {path} does not exist; {fix}")
    if not os.access(path, os.R_OK):
        raise HarnessError(f"{flag} {path} cannot be read (permission denied); fix its permissions")
    return path


def input_folder(path: Path, flag: str, fix: str, *, error: type[HarnessError] = HarnessError) -> Path:
    """Return `path` when it is a readable folder; else an `error` naming it and `fix`."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{flag} {path} is a file, not a folder; {fix}")
    if not path.is_dir():
        raise error(f"{flag} {path} does not exist; {fix}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise error(f"{flag} {path} cannot be read (permission denied); fix its permissions")
    return path


ENV_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def env_key(text: str) -> str:
    """Return `text` when it can be an environment key (a baseline's file stem): no path, no odd characters."""
    if not ENV_KEY_PATTERN.fullmatch(text) or len(text) > 200:
        raise HarnessError(
            f"--env-key {text!r} is not an environment key: keys are names like cpu-intel-xeon-6.207-2t-torch2.14 "
            "(letters, digits, '.', '_', '+', '-'); `ls baselines/` lists them"
        )
    return text


def number_in_range(
    value: float,
    flag: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    example: str = "",
) -> float:
    """Return `value` when it is finite and within [minimum, maximum] (where set)."""
    low = minimum is None or value >= minimum
    high = maximum is None or value <= maximum
    if not math.isfinite(value) or not low or not high:
        bounds = " and ".join(
            part for part in (
                f">= {minimum:g}" if minimum is not None else "",
                f"<= {maximum:g}" if maximum is not None else "",
            ) if part
        )
        hint = f", e.g. {example}" if example else ""
        raise HarnessError(f"{flag} must be a finite number{' ' + bounds if bounds else ''}{hint}, got {value!r}")
    return value


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Return the batch sizes of a comma list such as "1,32" (duplicates dropped); anything else raises."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise HarnessError(f"batch sizes are a comma list of positive integers, e.g. 1,32 (got {text!r})")
    return tuple(dict.fromkeys(sizes))


def torch_device(text: str, *, cuda_count: int) -> str:
    """Return a device option (cpu, cuda, cuda:N, auto) checked against the `cuda_count` GPUs torch sees."""
    if text in ("cpu", "auto"):
        return text
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise HarnessError(f"unknown device {text!r}: use cpu, cuda, cuda:N or auto")
    if cuda_count == 0:
        raise HarnessError(f"--device {text} asked for CUDA but torch sees no GPU: use --device cpu or auto")
    if match.group(1) is not None and int(match.group(1)) >= cuda_count:
        raise HarnessError(
            f"--device {text}: torch sees {cuda_count} GPU(s), numbered 0 to {cuda_count - 1}; pick one of those"
        )
    return text


def thread_count(threads: int, flag: str, *, cpus: int) -> int:
    """Return `threads` when it is between 1 and the `cpus` this process may use (more would time contention)."""
    if threads < 1 or threads > cpus:
        raise HarnessError(
            f"{flag} must be between 1 and the {cpus} CPUs this process may use (more threads than CPUs times "
            f"their contention, not the model), got {threads}"
        )
    return threads
