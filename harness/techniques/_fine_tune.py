"""Shared step of the techniques that retrain the float model (distill, prune_structured): one fine-tune recipe
per kind of data, its epochs an option of the technique, and the fine-tune itself cached by what it depends on."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness import train
from harness.techniques.base import ApplyContext, ModelState, Option, Technique

if TYPE_CHECKING:
    from torch import nn

# On digits, SGD lr 0.01 with a cosine decay: the pruned model is at chance (10%) before it and 3 epochs bring it
# back to >= the input; the no-teacher distillation baseline reaches its best (98.4%), so a gain over it is the
# teacher's (the article's Adam lr 1e-3 drags that baseline from 97.6% to 95.6%, which makes any teacher look
# helpful). ImageNet: one short epoch at lr 1e-3 from pretrained weights.
RECIPES: dict[str, train.TrainConfig] = {
    "small": train.TrainConfig(epochs=3, lr=0.01, schedule="cosine", batch_size=64),
    "imagenet": train.TrainConfig(epochs=1, lr=1e-3, schedule="cosine", batch_size=32),
}
EPOCHS_DEFAULT_TEXT = f"default: {RECIPES['small'].epochs} on small data, {RECIPES['imagenet'].epochs} on ImageNet"


def epochs_option(meaning: str, *, minimum: int) -> Option:
    """Return the `epochs` option of a technique that fine-tunes (its default is the recipe's, by data)."""
    return Option("epochs", int, None, f"{meaning} ({EPOCHS_DEFAULT_TEXT})", minimum=minimum)


def retraining_technique(
    name: str, summary: str, apply: Callable[[ModelState, ApplyContext], ModelState], *, epochs: Option,
    options: tuple[Option, ...] = (), **declared: Any,
) -> Technique:
    """Return the declaration of a technique that retrains the float model: it needs the eager float model
    (comes first in a variant), trains, and takes its fine-tune `epochs` option after its own `options`."""
    return Technique(name=name, summary=summary, apply=apply, needs="eager_float", trains=True,
                     options=(*options, epochs), **declared)


def recipe(ctx: ApplyContext, technique: str) -> train.TrainConfig:
    """Return the fine-tune recipe for the context's data, with `<technique>.epochs` if given and its seed; a model
    whose own training recomputes its BatchNorm statistics (models.recipe_for) has them recomputed after the
    fine-tune too (mobilenet_v3_small pruned and fine-tuned without it: 17.2%)."""
    from harness import models

    base = RECIPES["imagenet" if ctx.data.is_imagenet else "small"]
    epochs = int(ctx.option(technique, "epochs", base.epochs))
    recompute = models.recipe_for(ctx.arch).recompute_batchnorm
    return dataclasses.replace(base, epochs=epochs, seed=ctx.seed, recompute_batchnorm=recompute)


def fine_tuned(
    name: str,
    key: dict[str, object],
    start: nn.Module,
    ctx: ApplyContext,
    config: train.TrainConfig,
    *,
    purpose: str,
    teacher: nn.Module | None = None,
    desc: str | None = None,
) -> nn.Module:
    """Return a copy of `start` fine-tuned on the train split (distilled from `teacher` if given), cached by `key`
    under `name`; `purpose` names the technique in the error a missing train split raises, `desc` labels the
    progress (default: `name`)."""
    from harness import models

    train_set = ctx.data.training_split(purpose)
    loss = train.DistillConfig() if teacher is not None else None

    def run(model: nn.Module) -> None:
        train.fit(model, train_set, config, device=ctx.device, teacher=teacher, distill=loss, desc=desc or name,
                  progress=ctx.progress)

    model, _ = models.load_or_train(f"{name}-{ctx.arch}-{ctx.data.kind}", key, copy.deepcopy(start), run)
    return model.to(ctx.device).eval()
