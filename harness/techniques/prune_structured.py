"""prune_structured: remove 30% of conv channels (torch-pruning, L1), then fine-tune on the train split."""

from __future__ import annotations

import copy
import importlib.util
from typing import TYPE_CHECKING

from harness.errors import TechniqueError
from harness.techniques import _fine_tune
from harness.techniques.base import ApplyContext, ModelState, Option

if TYPE_CHECKING:
    from torch import nn


DEFAULT_RATIO = 0.3
ROUND_TO = 8
VERSION = 1



def classifier(module: nn.Module) -> nn.Module:
    """Return the classifier layer kept whole: `fc`, else the last Linear."""
    from torch import nn

    fc = getattr(module, "fc", None)
    linears = [fc] if isinstance(fc, nn.Linear) else [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TechniqueError(
            f"prune_structured keeps the classifier whole but {type(module).__name__} has no nn.Linear layer (no `fc`, "
            "no last Linear): it runs on a model whose head is an nn.Linear"
        )
    return linears[-1]


def prune_channels(module: nn.Module, ratio: float, image_size: tuple[int, int], round_to: int = ROUND_TO) -> nn.Module:
    """Remove `ratio` of the channels of every prunable conv group (L1 magnitude) in place, keeping a multiple of
    `round_to` channels in each."""
    import torch
    import torch_pruning as tp

    device = next(module.parameters()).device
    head = classifier(module)
    try:  # torch-pruning traces the model to find its dependency groups; it fails on some graphs
        pruner = tp.pruner.MetaPruner(
            module.eval(),
            torch.randn(1, 3, *image_size, device=device),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            round_to=round_to,
            ignored_layers=[head],
        )
        pruner.step()
        with torch.no_grad():
            module(torch.randn(1, 3, *image_size, device=device))
    except Exception as err:  # any failure means: this graph cannot be channel-pruned by torch-pruning
        raise TechniqueError(
            f"prune_structured: torch-pruning could not prune {type(module).__name__} "
            f"({type(err).__name__}: {str(err)[:200]}); prune_unstructured works on any conv model"
        ) from err
    return module


def changed_convs(before: nn.Module, after: nn.Module) -> frozenset[str]:
    """Return the names of the Conv2d layers whose input or output channel count differs."""
    from torch import nn


    def channels(module: nn.Module) -> dict[str, tuple[int, int]]:
        convs = ((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d))
        return {n: (m.in_channels, m.out_channels) for n, m in convs}

    old = channels(before)
    return frozenset(name for name, shape in channels(after).items() if old.get(name) != shape)


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with a channel-pruned, fine-tuned float model (cached by input weights and recipe)."""
    from harness import models

    ratio = float(ctx.option("prune_structured", "ratio", DEFAULT_RATIO))
    round_to = int(ctx.option("prune_structured", "round_to", ROUND_TO))
    ctx.data.training_split("prune_structured's fine-tune")
    config = _fine_tune.recipe(ctx, "prune_structured")
    key = {
        "input": models.weights_fingerprint(state.module),
        "ratio": ratio,
        "round_to": round_to,
        "recipe": config.to_dict(),
        "data": models.data_identity(ctx.data),
        "version": VERSION,
    }
    pruned = prune_channels(copy.deepcopy(state.module), ratio, ctx.data.image_size, round_to)

    if config.epochs:
        pruned = _fine_tune.fine_tuned("pruned", key, pruned, ctx, config, purpose="prune_structured's fine-tune",
                                       desc="fine-tuning")
    pruned = pruned.to(ctx.device).eval()
    layers = {"prune_structured": changed_convs(state.module, pruned)}
    note = f"prune_structured: {ratio:.0%} of channels removed, then {config.epochs} epochs of fine-tune"
    return state.evolve(module=pruned, float_module=pruned, covered=layers, note=note)


def torch_pruning_missing() -> str | None:
    """Return why torch-pruning cannot be used here, or None."""
    if importlib.util.find_spec("torch_pruning") is None:
        return "the torch-pruning package is not installed: pip install torch-pruning"
    return None


TECHNIQUE = _fine_tune.retraining_technique(
    "prune_structured", "channel pruning (torch-pruning, L1, 30%, multiples of 8) with a short fine-tune", apply,
    requirement=torch_pruning_missing,
    options=(
        Option("ratio", float, DEFAULT_RATIO, "fraction of each conv's output channels removed", above=0.0, below=1.0),
        Option("round_to", int, ROUND_TO, "channels kept per conv are a multiple of this (8 suits tensor cores and "
               "AMX tiles; 1 removes exactly the ratio)", minimum=1, maximum=64),
    ),
    epochs=_fine_tune.epochs_option("fine-tune epochs after pruning, 0 for none", minimum=0),
)
