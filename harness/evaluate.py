"""Top-1 and top-5 accuracy, and the per-image correctness that the gate's paired tests need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.errors import DataError

EVAL_BATCH_SIZE = 64


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over an eval set; `correct[i]` says whether image i's top-1 prediction was right."""

    top1: float
    top5: float
    correct: np.ndarray

    @property
    def n(self) -> int:
        """Return the number of images evaluated."""
        return int(self.correct.size)


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
) -> EvalResult:
    """Return top-1/top-5 of `model` on `dataset`, in dataset order, under torch.inference_mode().

    Every batch has exactly `batch_size` images (the last one is padded and the padding dropped), so that a
    compiled model sees one input shape and is not recompiled for the remainder.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    top1_hits: list[np.ndarray] = []
    top5_hits: list[np.ndarray] = []
    with torch.inference_mode():
        for images, labels in loader:
            n = images.shape[0]
            if n < batch_size:
                pad = images.new_zeros((batch_size - n, *images.shape[1:]))
                images = torch.cat([images, pad])
            logits = model(images.to(device))[:n].float().cpu()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            labels = labels.view(-1, 1)
            top1_hits.append((top[:, :1] == labels).any(dim=1).numpy())
            top5_hits.append((top == labels).any(dim=1).numpy())
    if not top1_hits:
        raise DataError("the eval set is empty: nothing to evaluate; give a data spec with eval images")
    correct = np.concatenate(top1_hits)
    return EvalResult(
        top1=float(correct.mean()),
        top5=float(np.concatenate(top5_hits).mean()),
        correct=correct,
    )
