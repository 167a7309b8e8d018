"""dynamic_int8: the article's torch.ao.quantization.quantize_dynamic of the nn.Linear layers (CPU only)."""

from __future__ import annotations

import warnings

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext, ModelState, int8_on_cpu, torch_release

NOTE = (
    "torch.ao.quantization.quantize_dynamic is deprecated in torch {version}; it quantizes nn.Linear only, so a "
    "CNN's convolutions stay float32"
)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with int8 weights (activations quantized at run time) in every nn.Linear layer."""
    import torch
    from torch import nn

    linears = [name for name, layer in state.module.named_modules() if type(layer) is nn.Linear]
    if not linears:
        raise TechniqueError(
            f"dynamic_int8 found no nn.Linear layer in {type(state.module).__name__} to quantize: "
            "it quantizes nn.Linear layers only, so it runs on a model with an nn.Linear head (none is left after "
            "static_int8/static_int8_fx)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated")  # kept as a note instead
        # quantize_dynamic (inplace=False) works on a deep copy: state.module stays untouched.
        module = torch.ao.quantization.quantize_dynamic(state.module, {nn.Linear}, dtype=torch.qint8)
    replaced = frozenset(name for name in linears if type(module.get_submodule(name)) is not nn.Linear)
    return state.evolve(module=module, covered={"dynamic_int8": replaced}, note=NOTE.format(version=torch_release()))


TECHNIQUE = int8_on_cpu(
    "dynamic_int8", "int8 nn.Linear weights, activations quantized at run time (the article's quantize_dynamic)",
    apply, why_cpu_only="quantized dynamic kernels run on CPU only",
)
