"""Shared step of the static int8 techniques: run calibration images (never eval ones) through observers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext, Option

if TYPE_CHECKING:
    import torch

DEFAULT_IMAGES = 256
BATCH_SIZE = 32
CALIBRATION_OPTION = Option(
    "calibration_images", int, DEFAULT_IMAGES, "calibration images run through the observers", minimum=1
)
"""The option both static int8 techniques declare (each under its own name)."""


def calibration_images(ctx: ApplyContext, technique: str) -> int:
    """Return how many calibration images to use: the `<technique>.calibration_images` option, else 256."""
    return int(ctx.option(technique, CALIBRATION_OPTION.name, CALIBRATION_OPTION.default))


def example_batch(ctx: ApplyContext) -> torch.Tensor:
    """Return a batch of 2 copies of the first calibration image (export specializes a batch of 1)."""
    if isinstance(ctx.data.calibration, Sized) and len(ctx.data.calibration) == 0:
        raise TechniqueError(
            "static int8 needs calibration images and the calibration split is empty: "
            "use a data spec with a train split (or lower eval_count)"
        )
    image = ctx.data.calibration[0][0]
    return image.unsqueeze(0).repeat(2, 1, 1, 1).to(ctx.device)


def calibration_batches(ctx: ApplyContext, technique: str) -> Iterator[torch.Tensor]:
    """Yield batches of calibration images, at most `calibration_images(ctx, technique)` images in all."""
    from torch.utils.data import DataLoader

    left = calibration_images(ctx, technique)
    loader = DataLoader(ctx.data.calibration, batch_size=min(BATCH_SIZE, left), shuffle=False)
    for images, _labels in loader:
        if left <= 0:
            return
        yield images[:left].to(ctx.device)
        left -= len(images[:left])


def calibrate(model: Callable[[torch.Tensor], object], ctx: ApplyContext, technique: str) -> int:
    """Run the calibration batches of `technique` through `model` (its observers record ranges); return the count."""
    import torch

    seen = 0
    with torch.inference_mode():
        for images in calibration_batches(ctx, technique):
            model(images)
            seen += len(images)
    return seen
