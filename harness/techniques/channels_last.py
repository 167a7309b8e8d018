"""channels_last: NHWC memory format for weights and activations."""

from __future__ import annotations

import copy

from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with channels_last weights and inputs."""
    import torch

    module = copy.deepcopy(state.module).to(memory_format=torch.channels_last)
    layers = {"channels_last": conv_and_linear_names(state.float_module)}
    return state.evolve(module=module, memory_format=torch.channels_last, covered=layers)


TECHNIQUE = Technique(
    name="channels_last", summary="NHWC (channels_last) memory format", apply=apply, needs="eager"
)
