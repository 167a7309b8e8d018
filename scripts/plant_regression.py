"""A pytest plugin that plants a known regression in one variant, to measure whether the gate catches it.

Load it with `-p plant_regression` (scripts/ on PYTHONPATH) and set PLANT, a comma list of
  slow:VARIANT:FRACTION  every call of VARIANT's model busy-waits FRACTION of the call's own duration
                         (slow:dynamic_int8:0.15 = 15% slower, whatever the batch size or device),
  acc:VARIANT:FRACTION   VARIANT's logits are rolled by one class for the images whose content hash falls
                         in the lowest FRACTION of hash space (deterministic: the same images on every run),
                         so each of those it got right becomes wrong: top-1 drops by about FRACTION x top-1,
  mem:VARIANT:FRACTION   every call of VARIANT's model also holds a buffer of FRACTION x its own peak memory
                         (weights plus the call's peak, measured unplanted once per input shape): mem:X:0.5 makes
                         the peak memory 1.5x, and
  size:VARIANT:FRACTION  VARIANT's shipped model carries an extra buffer of FRACTION x its serialized size.
The plugin wraps harness.pipeline.build_variant when pytest loads it (before the gate's plugin imports it) and
plants on the built variant, re-evaluating it, so accuracy, timing and the baseline all see the regression. It
names itself in HARNESS_PLUGINS, so a fresh process that re-measures a flagged case (harness.gate.remeasure)
imports it and times the planted variant too.
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
from harness.gate.remeasure import add_plugin
from harness.measure import activation_peak_bytes, size_stats, unwrap_module
from harness.techniques import canonical

ENV = "PLANT"
KINDS = ("slow", "acc", "mem", "size")
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
        if kind not in KINDS or not variant or not 0.0 < value < 1.0:
            raise ValueError(
                f"{ENV}={text!r}: write KIND:VARIANT:FRACTION with KIND one of {', '.join(KINDS)}, e.g. slow:fp32:0.15"
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


def hungrier(
    runner: Callable[[torch.Tensor], torch.Tensor], fraction: float, weights_bytes: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `runner` holding an extra buffer of `fraction` x (weights + its own unplanted peak) during each call."""
    extra: dict[tuple[object, ...], int] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = (tuple(x.shape), x.dtype, x.device)
        if shape not in extra:
            peak = activation_peak_bytes(lambda: runner(x), x.device) or 0
            extra[shape] = int(fraction * (weights_bytes + peak))
        held = torch.empty(extra[shape], dtype=torch.uint8, device=x.device)
        out = runner(x)
        del held
        return out

    return run


def heavier(module: torch.nn.Module, fraction: float) -> int:
    """Add an incompressible buffer of `fraction` x the module's serialized size to it; return its bytes."""
    nbytes = int(fraction * size_stats(module).size_bytes)
    noise = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    unwrap_module(module).register_buffer("planted_size_regression", noise)
    return nbytes


def plant(built: Any, session: Any, plants: list[Plant]) -> None:
    """Plant every regression aimed at `built`; re-evaluate or re-size it when accuracy or size was hit."""
    state = built.state
    for p in plants:
        if p.variant != built.name:
            continue
        inner = state.runner or state.module
        if p.kind == "slow":
            state.runner = slowed(inner, p.fraction)
        elif p.kind == "acc":
            state.runner = corrupted(inner, p.fraction)
            built.eval = evaluate(state, session.data.eval, device=session.device)
        elif p.kind == "mem":
            state.runner = hungrier(inner, p.fraction, built.size.tensor_bytes)
        else:
            heavier(state.module, p.fraction)
            built.size = size_stats(state.module)
        state.notes.append(f"PLANTED {p.kind} regression of {p.fraction:g} (scripts/plant_regression.py)")


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
    add_plugin(__name__)  # a fresh-process re-measurement must time the planted variant too


PLANTS = parse_plants(os.environ.get(ENV, ""))
if PLANTS:
    _install(PLANTS)


def pytest_report_header() -> str | None:
    if not PLANTS:
        return None
    return "PLANTED regressions: " + ", ".join(f"{p.kind}:{p.variant}:{p.fraction:g}" for p in PLANTS)
