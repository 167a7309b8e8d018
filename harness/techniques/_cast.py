"""Shared step of the reduced-precision techniques: cast weights and inputs to one float dtype."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from harness.techniques.base import ModelState, conv_and_linear_names

if TYPE_CHECKING:
    import torch


def cast_state(state: ModelState, name: str, dtype: torch.dtype) -> ModelState:
    """Return a copy of the state whose weights and inputs are `dtype` (BatchNorm included)."""
    module = copy.deepcopy(state.module).to(dtype)
    layers = {name: conv_and_linear_names(state.float_module)}
    return state.evolve(module=module, runner=None, input_dtype=dtype, covered=layers)
