"""The registry of techniques and variants that the CLI, the bench suite, the tests and the docs enumerate.

Adding a technique is one file in this package (named as its registry key, exposing `TECHNIQUE`) and one
line in `NAMES`. A variant is a `+`-joined list of technique names applied in order.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Sequence
from functools import cache

from harness.errors import TechniqueError
from harness.techniques.base import DEVICES, ApplyContext, ModelState, Option, Technique

__all__ = [
    "COMBINATIONS",
    "DEVICES",
    "NAMES",
    "PRESETS",
    "ApplyContext",
    "ModelState",
    "Option",
    "Technique",
    "all_techniques",
    "get",
    "parse_options",
    "parse_variant",
    "select_variants",
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


@cache
def variant_skip_reason(variant: str, device: str) -> str | None:
    """Return why `variant` cannot run on `device` here (the first technique that cannot), or None; asked once per
    variant and device in a process (what a technique needs does not change while it runs)."""
    for technique in parse_variant(variant):
        reason = technique.skip_reason(device)
        if reason:
            return reason
    return None


def select_variants(spec: str) -> tuple[str, ...]:
    """Return the variants a `--variants` value names: "all" is every registered one (see `variants`), else a
    comma list of variants and presets, presets turned into their `+` names, duplicates dropped.

    An unknown technique or an empty list raises TechniqueError listing the valid names.
    """
    if spec.strip() == "all":
        return tuple(variants())
    chosen = []
    for name in (part.strip() for part in spec.split(",")):
        if name:
            parse_variant(name)
            chosen.append(canonical(name))
    if not chosen:
        raise TechniqueError(f"the variant list is empty ({spec!r}): give 'all' or e.g. fp32,dynamic_int8")
    return tuple(dict.fromkeys(chosen))


def variants() -> list[str]:
    """Return every variant that `--variants all` means: each technique alone, then the combinations."""
    return [*NAMES, *COMBINATIONS]


def parse_options(pairs: Sequence[str], variants: Iterable[str] | None = None) -> dict[str, int | float]:
    """Return `technique.name=value` pairs as {"technique.name": typed value}, each checked against its declaration.

    An unknown technique or option, a value of the wrong kind or out of its declared range, the same option twice,
    or (when `variants` is given) an option of a technique no variant uses raises TechniqueError saying the fix.
    """
    used = None if variants is None else {t.name for v in variants for t in parse_variant(v)}
    parsed: dict[str, int | float] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        technique_name, dot, option_name = key.strip().partition(".")
        if not sep or not dot or not technique_name or not option_name:
            raise TechniqueError(
                f"--option takes technique.name=value, e.g. prune_structured.ratio=0.5 (got {pair!r})"
            )
        technique = get(technique_name)
        declared = {option.name: option for option in technique.options}
        if option_name not in declared:
            offer = f"its options: {', '.join(declared)}" if declared else "it takes no options"
            raise TechniqueError(
                f"--option {key}: {technique_name} has no option {option_name!r} ({offer}); "
                "`python -m harness list` shows every option"
            )
        key = f"{technique_name}.{option_name}"
        if key in parsed:
            raise TechniqueError(f"--option {key} is given twice; give it once")
        if used is not None and technique_name not in used:
            raise TechniqueError(
                f"--option {key} is set but no variant in this run uses {technique_name}; "
                f"drop the option or add a variant with {technique_name}"
            )
        parsed[key] = _option_value(declared[option_name], key, text.strip())
    return parsed


def _option_value(option: Option, key: str, text: str) -> int | float:
    wrong = f"--option {key} must be {option.range_text}, got {text!r}; {key} is the {option.meaning}"
    try:
        value: int | float = int(text) if option.kind is int else float(text)
    except ValueError:
        raise TechniqueError(wrong) from None
    if not math.isfinite(value) or not option.accepts(value):
        raise TechniqueError(wrong)
    return value
