"""Shared test setup: Hypothesis profiles (dev, ci) and small models that build in milliseconds."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config: pytest.Config) -> None:
    """Let Ctrl-C reach the commands the interrupt tests start. A shell without job control starts a background
    command (`pytest ... &` in a script) with SIGINT ignored; the pytest workers and every command they start inherit
    that, Python then installs no KeyboardInterrupt handler, and the tests' Ctrl-C does nothing (seen: four interrupt
    tests timing out in a fresh clone whose tests ran from a script in the background)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def tiny_classifier(num_classes: int = 10) -> nn.Module:
    """Return a conv-bn-relu-conv-pool-linear net: the shapes of a ResNet in a few thousand parameters."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    ).eval()


@pytest.fixture
def tiny_model() -> nn.Module:
    """A fresh tiny classifier for each test (techniques must not mutate their input)."""
    return tiny_classifier()


@pytest.fixture
def isolated_cache(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> object:
    """Point the harness cache at a temporary folder, so a test never reads or writes the user's cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def load_script(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Return a scripts/ file loaded fresh as module `name`, registered in sys.modules for the test only
    (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module
