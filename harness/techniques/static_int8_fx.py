"""static_int8_fx: post-training static int8 through the FX graph-mode path (torch.ao, deprecated)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from harness.errors import TechniqueError
from harness.techniques._calibrate import CALIBRATION_OPTION, calibrate, example_batch
from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names


def requirement() -> str | None:
    """Return why the FX graph-mode quantization path cannot run here, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import get_default_qconfig_mapping  # noqa: F401
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except ImportError as exc:
        return (
            f"torch {torch.__version__} has no FX graph-mode quantization ({exc}): use static_int8 "
            "(PT2E), or a torch that still ships torch.ao.quantization.quantize_fx"
        )
    return None


def quantized_layers(module: nn.Module, float_names: frozenset[str]) -> frozenset[str]:
    """Return the float Conv2d/Linear names that are now modules holding a quantized weight.

    convert_fx keeps the layer names (a Conv2d+BatchNorm+ReLU becomes one quantized ConvReLU2d at the conv's
    name), and a quantized layer's `weight` is a method returning a qint8 tensor.
    """
    names = set()
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if name in float_names and callable(weight) and weight().is_quantized:
            names.add(name)
    return frozenset(names)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with an FX int8 model (x86 qconfig) calibrated on calibration images."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if state.runner is not None or state.input_dtype != torch.float32:
        raise TechniqueError(
            "static_int8_fx quantizes the eager float32 model: it must come before "
            "compile/cuda_graphs and before bf16/fp16 in a variant"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and observer warnings, once per layer
        mapping = get_default_qconfig_mapping("x86")
        prepared = prepare_fx(copy.deepcopy(state.module).eval(), mapping, (example_batch(ctx),))
        images = calibrate(prepared, ctx, "static_int8_fx")
        converted = convert_fx(prepared)
    layers = quantized_layers(converted, conv_and_linear_names(state.float_module))
    note = (
        f"FX int8 calibrated on {images} calibration images; torch.ao.quantization's FX graph mode "
        f"is deprecated in torch {torch.__version__.split('+')[0]}"
    )
    return state.evolve(
        module=converted,
        covered={"static_int8_fx": layers},
        notes=[*state.notes, note],
    )


TECHNIQUE = Technique(
    name="static_int8_fx",
    summary="static int8 of every conv and linear (FX graph mode, x86 qconfig; deprecated torch.ao path)",
    apply=apply,
    unsupported={"cuda": "the x86/fbgemm quantized kernels run on CPU only"},
    requirement=requirement,
    options=(CALIBRATION_OPTION,),
)
