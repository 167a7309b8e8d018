"""Shared step of the static int8 techniques: run calibration images (never eval ones) through observers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import torch
from torch.utils.data import DataLoader

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext

DEFAULT_IMAGES = 256
BATCH_SIZE = 32


def calibration_images(ctx: ApplyContext) -> int:
    """Return how many calibration images to use: the `static_int8.calibration_images` option, else 256."""
    count = ctx.option("static_int8", "calibration_images", DEFAULT_IMAGES)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TechniqueError(f"static_int8.calibration_images must be a positive whole number, got {count!r}")
    return count


def example_batch(ctx: ApplyContext) -> torch.Tensor:
    """Return a batch of 2 copies of the first calibration image (export specializes a batch of 1)."""
    if isinstance(ctx.data.calibration, Sized) and len(ctx.data.calibration) == 0:
        raise TechniqueError(
            "static int8 needs calibration images and the calibration split is empty: "
            "use a data spec with a train split (or lower eval_count)"
        )
    image = ctx.data.calibration[0][0]
    return image.unsqueeze(0).repeat(2, 1, 1, 1).to(ctx.device)


def calibration_batches(ctx: ApplyContext) -> Iterator[torch.Tensor]:
    """Yield batches of calibration images, at most `calibration_images(ctx)` images in all."""
    left = calibration_images(ctx)
    loader = DataLoader(ctx.data.calibration, batch_size=min(BATCH_SIZE, left), shuffle=False)
    for images, _labels in loader:
        if left <= 0:
            return
        yield images[:left].to(ctx.device)
        left -= len(images[:left])


def calibrate(model: Callable[[torch.Tensor], object], ctx: ApplyContext) -> int:
    """Run the calibration batches through `model` (its observers record ranges); return the image count."""
    seen = 0
    with torch.inference_mode():
        for images in calibration_batches(ctx):
            model(images)
            seen += len(images)
    return seen
