"""prune_unstructured: the article's global L1 pruning of 30% of all Conv2d weights, masks folded in."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques.base import ApplyContext, ModelState, Option, Technique

if TYPE_CHECKING:
    from torch import nn

DEFAULT_AMOUNT = 0.3


def conv_names(module: nn.Module) -> frozenset[str]:
    """Return the names of every Conv2d layer of `module`."""
    from torch import nn

    return frozenset(name for name, layer in module.named_modules() if isinstance(layer, nn.Conv2d))


def prune_convs(module: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` fraction of smallest-|w| Conv2d weights, ranked over all convs together, in place.

    The masks are folded into the weights (`prune.remove`), so the state_dict has its original keys and
    shapes: the zeros sit inside dense tensors. Returns `module`.
    """
    from torch import nn
    from torch.nn.utils import prune

    convs = [layer for layer in module.modules() if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise TechniqueError(f"prune_unstructured found no Conv2d layer in {type(module).__name__} to prune")
    params = [(layer, "weight") for layer in convs]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for layer, name in params:
        prune.remove(layer, name)
    return module


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with 30% (option `prune_unstructured.amount`) of all conv weights set to zero."""
    amount = float(ctx.option("prune_unstructured", "amount", DEFAULT_AMOUNT))
    module = prune_convs(copy.deepcopy(state.module), amount)
    layers = {"prune_unstructured": conv_names(module)}
    note = (
        f"prune_unstructured: {amount:.0%} of conv weights are zero, but inside dense tensors: the saved "
        "file keeps its size (only the compressed size drops) and dense kernels run no faster"
    )
    return state.evolve(module=module, float_module=module, covered=layers, note=note)


TECHNIQUE = Technique(
    name="prune_unstructured",
    summary="global L1 unstructured pruning of 30% of conv weights (torch.nn.utils.prune), no fine-tune",
    apply=apply,
    needs="eager_float",
    options=(
        Option("amount", float, DEFAULT_AMOUNT, "fraction of all conv weights set to zero", minimum=0.0, below=1.0),
    ),
)
