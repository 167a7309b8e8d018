"""dynamic_int8: the article's torch.ao.quantization.quantize_dynamic of the nn.Linear layers (CPU only)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext, ModelState, Technique

NOTE = (
    "torch.ao.quantization.quantize_dynamic is deprecated in torch "
    f"{torch.__version__.split('+')[0]}; it quantizes nn.Linear only, so a CNN's convolutions stay float32"
)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with int8 weights (activations quantized at run time) in every nn.Linear layer."""
    if state.runner is not None or state.input_dtype != torch.float32:
        raise TechniqueError(
            "dynamic_int8 quantizes the eager float32 model: it must come before "
            "compile/cuda_graphs and before bf16/fp16 in a variant"
        )
    linears = [name for name, layer in state.module.named_modules() if type(layer) is nn.Linear]
    if not linears:
        raise TechniqueError(
            f"dynamic_int8 found no nn.Linear layer in {type(state.module).__name__} to quantize: "
            "it quantizes nn.Linear layers only (none is left after static_int8/static_int8_fx)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated")  # kept as a note instead
        # quantize_dynamic (inplace=False) works on a deep copy: state.module stays untouched.
        module = torch.ao.quantization.quantize_dynamic(state.module, {nn.Linear}, dtype=torch.qint8)
    replaced = frozenset(name for name in linears if type(module.get_submodule(name)) is not nn.Linear)
    return state.evolve(
        module=module,
        covered={"dynamic_int8": replaced},
        notes=[*state.notes, NOTE],
    )


TECHNIQUE = Technique(
    name="dynamic_int8",
    summary="int8 nn.Linear weights, activations quantized at run time (the article's quantize_dynamic)",
    apply=apply,
    unsupported={"cuda": "quantized dynamic kernels run on CPU only"},
)
