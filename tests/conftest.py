"""Shared test setup: the Hypothesis profiles (dev, the default; ci, full size), fixtures, and Ctrl-C for the
interrupt tests. Helpers live in helpers.py and _gate.py."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import FULL_SIZE_EXAMPLES, tiny_classifier
from hypothesis import HealthCheck, settings
from torch import nn

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=FULL_SIZE_EXAMPLES, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config: pytest.Config) -> None:
    """Let Ctrl-C reach the commands the interrupt tests start, and give each pytest-xdist worker CPUs of its own.

    A shell without job control starts a background command with SIGINT ignored, and every command it starts would
    inherit that (Python then installs no KeyboardInterrupt handler). Workers that share every CPU each run torch on
    all of them, and the processes their tests start do too: OpenMP threads then outnumber the CPUs and spin at each
    other's barriers, which made the suite several times slower on 2 cores. Worker gwN keeps the N-th share of the
    CPUs this process may use (harness.machine.available_cpus reads the affinity, so every command a test starts
    uses only them)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    pin_xdist_worker()


def pin_xdist_worker() -> None:
    """Pin this pytest-xdist worker to its share of the CPUs (nothing outside xdist or without affinity)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not count.isdigit() or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index, workers = int(worker[2:]), int(count)
    if workers < 2 or workers > len(cpus):
        return
    share = [cpu for i, cpu in enumerate(cpus) if i % workers == index % workers]
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


@pytest.fixture
def tiny_model() -> nn.Module:
    """A fresh tiny classifier for each test (techniques must not mutate their input)."""
    return tiny_classifier()


@pytest.fixture
def isolated_cache(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> object:
    """Point the harness cache at a temporary folder, so a test never reads or writes the user's cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
