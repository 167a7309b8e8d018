"""Helpers the tests share: small models that build in milliseconds, loading a script, fuzz sizes by profile.

Tests import these from here (never from conftest or from another test module).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import settings
from torch import nn

FULL_SIZE_EXAMPLES = 50
"""A Hypothesis profile with at least this many examples per test (the ci profile) runs the fuzz tests at their full
size; a smaller one (dev, the default) at a twentieth of it."""


def fuzz_examples(full: int) -> int:
    """Return how many examples a fuzz test of `full` examples runs under the loaded Hypothesis profile."""
    return full if settings.default.max_examples >= FULL_SIZE_EXAMPLES else max(10, full // 20)


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


def load_script(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Return a scripts/ file loaded fresh as module `name`, registered in sys.modules for the test only
    (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module
