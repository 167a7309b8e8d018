"""bf16: bfloat16 weights and activations."""

from __future__ import annotations

from harness.techniques._cast import cast_state
from harness.techniques.base import BF16_HARDWARE, ApplyContext, ModelState, Technique


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with bfloat16 weights and inputs."""
    import torch

    return cast_state(state, "bf16", torch.bfloat16)


TECHNIQUE = Technique(name="bf16", summary="bfloat16 weights and activations", apply=apply, hardware=BF16_HARDWARE)
