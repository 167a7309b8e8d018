"""Where the harness keeps what it makes: trained models, the inductor cache."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HARNESS_CACHE_DIR"


def cache_dir() -> Path:
    """Return the cache folder ($HARNESS_CACHE_DIR, else ~/.cache/resnet-gate), creating it."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resnet-gate")
    root.mkdir(parents=True, exist_ok=True)
    return root


def inductor_cache_dir() -> Path:
    """Return the project-owned inductor cache and point torch.compile at it."""
    path = cache_dir() / "inductor"
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path))
    return path
