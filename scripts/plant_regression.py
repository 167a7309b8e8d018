"""A pytest plugin that plants a known regression in one variant, to measure whether the gate catches it.

Load it with `-p plant_regression` (scripts/ on PYTHONPATH) and set PLANT, a comma list of
  slow:VARIANT:FRACTION  every call of VARIANT's model busy-waits FRACTION of the call's own duration
                         (slow:dynamic_int8:0.15 = 15% slower, whatever the batch size or device), and
  acc:VARIANT:FRACTION   VARIANT's logits are rolled by one class for the images whose content hash falls
                         in the lowest FRACTION of hash space (deterministic: the same images on every run),
                         so each of those it got right becomes wrong: top-1 drops by about FRACTION x top-1.
The plugin wraps harness.pipeline.build_variant when pytest loads it (before bench/conftest.py imports it) and
plants on the built variant, re-evaluating it, so accuracy, timing and the baseline all see the regression.
It lives here, not in harness/, so no production code path can plant anything.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import harness.pipeline as pipeline
from harness.evaluate import evaluate
from harness.techniques import canonical

ENV = "PLANT"
_HASH_SPACE = 1 << 32
_HASHED_VALUES = 1024


@dataclass(frozen=True)
class Plant:
    """One planted regression: kind ("slow" | "acc"), the variant it hits, and its size as a fraction."""

    kind: str
    variant: str
    fraction: float


def parse_plants(text: str) -> list[Plant]:
    """Return the plants of a PLANT value such as "slow:dynamic_int8:0.15,acc:fp32:0.02"."""
    plants = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, rest = part.partition(":")
        variant, _, fraction = rest.rpartition(":")
        try:
            value = float(fraction)
        except ValueError:
            value = -1.0
        if kind not in ("slow", "acc") or not variant or not 0.0 < value < 1.0:
            raise ValueError(
                f"{ENV}={text!r}: write slow:VARIANT:FRACTION or acc:VARIANT:FRACTION, e.g. slow:fp32:0.15"
            )
        plants.append(Plant(kind, canonical(variant), value))
    return plants


def image_selected(image: torch.Tensor, fraction: float) -> bool:
    """Return True for a deterministic `fraction` of images: those whose content hash is lowest."""
    values = image.detach().flatten()[:_HASHED_VALUES].float().cpu().numpy().tobytes()
    digest = int.from_bytes(hashlib.blake2b(values, digest_size=4).digest(), "little")
    return digest < fraction * _HASH_SPACE


def slowed(runner: Callable[[torch.Tensor], torch.Tensor], fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `runner` made `fraction` slower: after each call, busy-wait that share of its duration."""

    def run(x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = runner(x)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        spent = time.perf_counter() - start
        deadline = start + spent * (1.0 + fraction)
        while time.perf_counter() < deadline:
            pass
        return out

    return run


def corrupted(
    runner: Callable[[torch.Tensor], torch.Tensor], fraction: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `runner` with the logits of the selected images rolled by one class (their top-1 changes)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = runner(x)
        rows = [i for i in range(x.shape[0]) if image_selected(x[i], fraction)]
        if rows:
            out = out.clone()
            index = torch.tensor(rows, device=out.device)
            out[index] = torch.roll(out[index], shifts=1, dims=1)
        return out

    return run


def plant(built: Any, session: Any, plants: list[Plant]) -> None:
    """Plant every regression aimed at `built` into its runner; re-evaluate when accuracy was hit."""
    state = built.state
    for p in plants:
        if p.variant != built.name:
            continue
        inner = state.runner or state.module
        state.runner = slowed(inner, p.fraction) if p.kind == "slow" else corrupted(inner, p.fraction)
        state.notes.append(f"PLANTED {p.kind} regression of {p.fraction:g} (scripts/plant_regression.py)")
        if p.kind == "acc":
            with pipeline.ieee_fp32(session.device):
                built.eval = evaluate(state, session.data.eval, device=session.device)


def _install(plants: list[Plant]) -> None:
    original = pipeline.build_variant
    if getattr(original, "planted", False):
        return

    def build_variant(session: Any, variant: str) -> Any:
        fresh = variant not in session.built
        built = original(session, variant)
        if fresh:
            plant(built, session, plants)
        return built

    build_variant.planted = True  # type: ignore[attr-defined]
    pipeline.build_variant = build_variant


PLANTS = parse_plants(os.environ.get(ENV, ""))
if PLANTS:
    _install(PLANTS)


def pytest_report_header() -> str | None:
    if not PLANTS:
        return None
    return "PLANTED regressions: " + ", ".join(f"{p.kind}:{p.variant}:{p.fraction:g}" for p in PLANTS)
