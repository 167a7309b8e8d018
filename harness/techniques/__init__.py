"""The registry of techniques and variants that the CLI, the bench suite, the tests and the docs enumerate.

Adding a technique is one file in this package (named as its registry key, exposing `TECHNIQUE`) and one
line in `NAMES`. A variant is a `+`-joined list of technique names applied in order.
"""

from __future__ import annotations

import importlib
from functools import cache

from harness.errors import TechniqueError
from harness.techniques.base import DEVICES, ApplyContext, ModelState, Technique

__all__ = [
    "COMBINATIONS",
    "DEVICES",
    "NAMES",
    "PRESETS",
    "ApplyContext",
    "ModelState",
    "Technique",
    "all_techniques",
    "get",
    "parse_variant",
    "variant_skip_reason",
    "variants",
]

NAMES: tuple[str, ...] = (
    "fp32",
    "tf32",
    "fp16",
    "bf16",
    "channels_last",
    "compile",
    "cuda_graphs",
    "dynamic_int8",
    "static_int8",
    "static_int8_fx",
    "prune_unstructured",
    "prune_structured",
    "sparse_2to4",
    "distill",
)

# Named presets: the article's three combinations and the fastest recipe we know per device.
PRESETS: dict[str, str] = {
    "article_quant_prune": "prune_unstructured+dynamic_int8",
    "article_distill_prune": "distill+prune_unstructured",
    "article_quant_distill": "distill+dynamic_int8",
    "fastest_cpu": "prune_structured+static_int8",
    "fastest_cuda": "prune_structured+bf16+channels_last+compile",
}
COMBINATIONS: tuple[str, ...] = tuple(dict.fromkeys(PRESETS.values()))


@cache
def get(name: str) -> Technique:
    """Return the registered technique `name`; an unknown name lists the valid ones."""
    if name not in NAMES:
        raise TechniqueError(
            f"unknown technique {name!r}: choose from {', '.join(NAMES)} (or a preset: {', '.join(PRESETS)})"
        )
    technique: Technique = importlib.import_module(f"harness.techniques.{name}").TECHNIQUE
    if technique.name != name:
        raise TechniqueError(f"harness/techniques/{name}.py declares {technique.name!r}: the key must equal the file")
    return technique


def all_techniques() -> list[Technique]:
    """Return every registered technique, in registry order."""
    return [get(name) for name in NAMES]


def canonical(variant: str) -> str:
    """Return the `+`-joined technique list a variant or preset name stands for."""
    variant = variant.strip()
    return PRESETS.get(variant, variant)


def parse_variant(variant: str) -> tuple[Technique, ...]:
    """Return the techniques of a variant (`a+b+c` or a preset name), in the order they are applied."""
    names = [part.strip() for part in canonical(variant).split("+")]
    if not variant.strip() or any(not n for n in names):
        raise TechniqueError(
            f"empty technique name in variant {variant!r}: write names joined by '+', e.g. bf16+compile"
        )
    return tuple(get(n) for n in names)


def variant_skip_reason(variant: str, device: str) -> str | None:
    """Return why `variant` cannot run on `device` here (the first technique that cannot), or None."""
    for technique in parse_variant(variant):
        reason = technique.skip_reason(device)
        if reason:
            return reason
    return None


def variants() -> list[str]:
    """Return every variant that `--variants all` means: each technique alone, then the combinations."""
    return [*NAMES, *COMBINATIONS]
