"""What a technique is: the model state it transforms, the context it gets, and its declaration."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from harness.data import DataBundle
    from harness.evaluate import EvalResult

Evaluator = Callable[[nn.Module], "EvalResult"]
"""Evaluates a module on the run's eval images (on the run's device)."""
Judgement = tuple[dict[str, Any], list[str]]
"""What a technique's judge returns: extra fields for the case, and notes."""

DEVICES = ("cpu", "cuda")


@dataclass
class ModelState:
    """A model on its way through a variant's techniques.

    `module` is what would be shipped: size is measured on its state_dict. `float_module` is the last
    eager floating-point model, on which MACs and parameter coverage are counted. `runner`, when set, is
    what actually runs (a compiled module, a graph replay); inputs are cast to `input_dtype` and
    `memory_format` before it and outputs come back as float32 logits.
    """

    module: nn.Module
    float_module: nn.Module
    runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    coverage_layers: dict[str, frozenset[str]] = field(default_factory=dict)
    compile_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, module: nn.Module) -> ModelState:
        """Return the state for an untouched eager float32 model (a private copy of it)."""
        own = copy.deepcopy(module).eval()
        return cls(module=own, float_module=own)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.input_dtype, memory_format=self.memory_format)
        out = (self.runner or self.module)(x)
        return out.float()

    @property
    def is_eager_float(self) -> bool:
        """Return True while this is still the eager float32 model: no runner, no cast, nothing quantized.

        Techniques that edit or retrain the float model (pruning, distillation) must come before the others.
        """
        return self.runner is None and self.input_dtype == torch.float32 and self.module is self.float_module

    def evolve(self, *, covered: Mapping[str, frozenset[str]] | None = None, **changes: Any) -> ModelState:
        """Return a copy with `changes` applied (the lists and dicts are copied, not shared); `covered` adds
        {technique: the layers it transformed} to the coverage."""
        base = replace(
            self,
            coverage_layers={**self.coverage_layers, **(covered or {})},
            notes=list(self.notes),
            extra=dict(self.extra),
        )
        return replace(base, **changes)


@dataclass(frozen=True)
class ApplyContext:
    """What a technique may use besides the model: never the eval images."""

    device: torch.device
    data: DataBundle
    arch: str = "resnet18"
    seed: int = 0
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, technique: str, name: str, default: Any) -> Any:
        """Return the user's `technique.name` option (parsed and range-checked by options.parse_options), else
        `default` (the technique's declared default, or its recipe's value where the declaration says None)."""
        return self.options.get(f"{technique}.{name}", default)


def conv_and_linear_names(module: nn.Module) -> frozenset[str]:
    """Return the names of every Conv2d and Linear layer: what a whole-model technique covers."""
    return frozenset(n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear))


@dataclass(frozen=True)
class Option:
    """One option a technique declares: `--option technique.name=value` is parsed and checked against it.

    `kind` is int or float; `default` None means "the technique's recipe decides" (said in `meaning`). The value
    must be >= `minimum` / > `above` and <= `maximum` / < `below`, where set.
    """

    name: str
    kind: type
    default: int | float | None
    meaning: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None

    @property
    def range_text(self) -> str:
        """Return the accepted range in words, e.g. "a number in (0, 1)" or "a whole number >= 1"."""
        noun = "a whole number" if self.kind is int else "a number"
        low = high = ""
        if self.minimum is not None or self.above is not None:
            low = f"[{self.minimum:g}" if self.minimum is not None else f"({self.above:g}"
        if self.maximum is not None or self.below is not None:
            high = f"{self.maximum:g}]" if self.maximum is not None else f"{self.below:g})"
        if low and high:
            return f"{noun} in {low}, {high}"
        if low:
            return f"{noun} {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{noun} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return noun

    def accepts(self, value: float) -> bool:
        """Return True when `value` lies in the declared range."""
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
            or (self.below is not None and value >= self.below)
        )


@dataclass(frozen=True)
class Technique:
    """One optimization technique, as the registry, the CLI, the bench suite and the docs see it.

    `unsupported` maps a device to the reason the technique cannot run there; `requirement`, when set,
    returns a reason it cannot run in this environment (torch too old, a package missing) or None. `options`
    declares what `--option <name>.<option>=value` may set. `judge`, when set, runs after the variant is evaluated
    with the final state, its eval result and an evaluator of any module on the same eval images, and returns
    what the technique's result means (extra fields for the case, notes): distillation compares its student with
    the same fine-tune without the teacher there.
    """

    name: str
    summary: str
    apply: Callable[[ModelState, ApplyContext], ModelState]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    requirement: Callable[[], str | None] | None = None
    trains: bool = False
    options: tuple[Option, ...] = ()
    judge: Callable[[ModelState, EvalResult, Evaluator], Judgement] | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        """Return the devices this technique runs on."""
        return tuple(d for d in DEVICES if d not in self.unsupported)

    def skip_reason(self, device: str) -> str | None:
        """Return why this technique cannot run on `device` here (with what would make it run), or None."""
        if device in self.unsupported:
            return f"{self.name} does not run on {device}: {self.unsupported[device]}"
        if self.requirement is not None:
            missing = self.requirement()
            if missing:
                return f"{self.name} cannot run here: {missing}"
        return None
