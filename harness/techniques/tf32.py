"""tf32: fp32 weights and activations with TF32 tensor-core math for matmuls and convolutions (CUDA)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names


@contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """Run the block with TF32 on or off for CUDA matmuls and cuDNN convolutions, then restore the flags.

    PyTorch lets cuDNN convolutions use TF32 by default, so an "fp32" CUDA model is silently TF32 unless
    this is turned off: the fp32 reference runs with it off, the tf32 variant with it on.
    """
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        saved = (matmul.fp32_precision, conv.conv.fp32_precision)
        matmul.fp32_precision = conv.conv.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.conv.fp32_precision = saved
        return
    saved_old = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32 = conv.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = saved_old


def with_fp32_math(fn: Callable[[torch.Tensor], torch.Tensor], tf32: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `fn` wrapped so that every call runs under `fp32_math(tf32)`."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with fp32_math(tf32):
            return fn(x)

    return run


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state running under TF32 math."""
    runner = with_fp32_math(state.runner or state.module, tf32=True)
    layers = {"tf32": conv_and_linear_names(state.float_module)}
    return state.evolve(runner=runner, covered=layers)


TECHNIQUE = Technique(
    name="tf32",
    summary="fp32 with TF32 tensor-core matmuls and convolutions",
    apply=apply,
    unsupported={"cpu": "TF32 is a tensor-core format of NVIDIA GPUs (Ampere and newer); run with --device cuda"},
)
