"""tf32: fp32 weights and activations with TF32 tensor-core math for matmuls and convolutions (CUDA)."""

from __future__ import annotations

from harness.techniques.base import ApplyContext, Hardware, ModelState, Technique, conv_and_linear_names


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state running under TF32 math (ModelState sets the math mode around every call)."""
    return state.evolve(tf32=True, covered={"tf32": conv_and_linear_names(state.float_module)})


TECHNIQUE = Technique(
    name="tf32",
    summary="fp32 with TF32 tensor-core matmuls and convolutions",
    apply=apply,
    unsupported={"cpu": "TF32 is a tensor-core format of NVIDIA GPUs (Ampere and newer); run with --device cuda"},
    hardware=Hardware(what={"cuda": "TF32 tensor cores"}, cuda_capability=(8, 0)),
)
