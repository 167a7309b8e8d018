"""fp16: half-precision weights and activations."""

from __future__ import annotations

from harness.techniques._cast import cast_state
from harness.techniques.base import ApplyContext, Hardware, ModelState, Technique


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with float16 weights and inputs."""
    import torch

    return cast_state(state, "fp16", torch.float16)


TECHNIQUE = Technique(
    name="fp16",
    summary="float16 weights and activations",
    apply=apply,
    unsupported={
        "cpu": "CPUs have no fast fp16 convolution kernels (measured 20-40x slower than fp32 here); "
        "use bf16 on CPU, or run fp16 with --device cuda"
    },
    hardware=Hardware(what={"cuda": "fp16 tensor cores"}, cuda_capability=(7, 0)),
)
