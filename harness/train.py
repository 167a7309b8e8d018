"""Training loops: the built-in default model, the teacher, distillation and fine-tunes."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from harness.errors import DataError, HarnessError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; its fields (with the data and the arch) make the cache key of what it trains."""

    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    recompute_batchnorm: bool = False
    """After training, recompute every BatchNorm's running statistics over the training split (one pass, a plain
    average). torchvision gives some models momentum 0.01 (MobileNetV3, EfficientNet): a few hundred steps leave
    their running statistics far from the weights' (mobilenet_v3_small: 9.6% eval top-1 without, 97% with)."""

    def to_dict(self) -> dict[str, object]:
        """Return the recipe as a plain dict (for cache keys and results); recompute_batchnorm only when on, so
        the recipes older than it keep their cache keys."""
        recipe = asdict(self)
        if not self.recompute_batchnorm:
            del recipe["recompute_batchnorm"]
        return recipe


TRAINING_THREADS = 2
"""Training always runs on this many CPU threads: the order of a parallel reduction decides the last bits of every
weight, so a fixed count (with a fixed seed and initialization) makes the trained model the same bits on every
machine of a kind, whatever its core count or OMP_NUM_THREADS."""


@contextlib.contextmanager
def training_threads(threads: int = TRAINING_THREADS) -> Iterator[None]:
    """Run the block on `threads` intra-op threads, then restore the count it had."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class DistillConfig:
    """The article's distillation loss: KL(student/T, teacher/T) * T^2 * alpha + CE * (1 - alpha)."""

    temperature: float = 5.0
    alpha: float = 0.7


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for the data loader's shuffling."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, config: DistillConfig
) -> torch.Tensor:
    """Return the article's distillation loss for one batch."""
    import torch.nn.functional as F

    t = config.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean"
    )
    hard = F.cross_entropy(student_logits, labels)
    return soft * (t * t) * config.alpha + hard * (1.0 - config.alpha)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise HarnessError(f"unknown optimizer {config.optimizer!r}: use 'sgd' or 'adam'")


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    import torch

    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if config.schedule == "constant":
        return None
    raise HarnessError(f"unknown schedule {config.schedule!r}: use 'onecycle', 'cosine' or 'constant'")


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Mixed precision on CUDA, as the article advises; plain fp32 on CPU (CPU autocast buys nothing here)."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _batches(
    loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def fit(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, int]],
    config: TrainConfig,
    *,
    device: torch.device,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Train `model` in place on `dataset`; with a teacher, with the distillation loss. Return per-epoch mean loss.

    On the CPU it is bit-reproducible for a seed on a machine kind: it runs on TRAINING_THREADS threads whatever
    the process uses. On CUDA the step runs under fp16 autocast with a gradient scaler. The model is left in eval
    mode.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError(f"{desc}: the training set is empty; give a data spec with training images")
    with training_threads():
        return _fit(model, dataset, config, device=device, teacher=teacher, distill=distill, desc=desc,
                    progress=progress)


def _fit(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, int]],
    config: TrainConfig,
    *,
    device: torch.device,
    teacher: nn.Module | None,
    distill: DistillConfig | None,
    desc: str,
    progress: bool,
) -> list[float]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    generator = seed_everything(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config, config.epochs * len(loader))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    kd = distill or DistillConfig()
    epoch_losses: list[float] = []
    # A bar redraws itself with '\r' on every step: right in a terminal, hundreds of lines in a CI log. Off a
    # terminal, one line per epoch instead.
    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * len(loader), desc=desc, disable=not interactive, leave=False, unit="step")
    for epoch in range(config.epochs):
        total, count = 0.0, 0
        for images, labels in _batches(loader, device):
            with _autocast(device):
                logits = model(images)
                if teacher is None:
                    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = distillation_loss(logits.float(), teacher_logits.float(), labels, kd)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3f}")
        epoch_losses.append(total / max(count, 1))
        if progress and not interactive:
            line = f"{desc}: epoch {epoch + 1}/{config.epochs}, loss {epoch_losses[-1]:.3f}"
            print(line, file=sys.stderr, flush=True)
    bar.close()
    if config.recompute_batchnorm:
        recompute_batchnorm(model, dataset, config.batch_size, device)
    model.eval()
    return epoch_losses


def recompute_batchnorm(
    model: nn.Module, dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, device: torch.device
) -> None:
    """Set every BatchNorm's running mean and variance to their average over one in-order pass of `dataset`."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(((images.to(device), labels) for images, labels in loader), model)
