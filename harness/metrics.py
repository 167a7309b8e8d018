"""What a metric is: its name, unit, good direction, heading, format and how the gate judges it, declared once.

A metric is declared on the `CaseResult` field that keeps it (`measured(...)` in harness/results.py), so adding
one is that declaration plus the code that measures it: the run table, `compare`, the report, the gate's checks,
the baseline file, the thresholds file's keys and pytest-benchmark's `extra_info` all read `results.METRICS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.results import CaseResult

REFERENCE = "fp32"
"""The variant every other one is measured against; its own change and speedup read "ref"."""

UNITS = ("fraction", "bytes", "count", "ratio", "seconds", "ms", "images/s")
JUDGED = ("accuracy", "exact", "memory", "timing")
"""How the gate judges a metric against the baseline. accuracy: paired test on per-image correctness of the same
model and images; exact: deterministic, any change beyond the tolerance is real and an unexplained gain fails as
stale; memory: the per-call peak, nearly deterministic, a gain is reported only; timing: a ratio judged against
the spread of the baseline's runs. A metric with `judged=None` is recorded and shown, never gated."""

MB = 1e6
"""Bytes in the megabyte every size is shown in."""
_SCALE = {"bytes": (MB, "MB"), "count": (1e9, "G")}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Metric:
    """One metric of a case, declared once.

    `name` keys it everywhere (thresholds, baselines, history, extra_info); `heading` is its column title;
    `unit` picks its format (fractions as percent, bytes in MB, counts in G, ratios with an x); `digits` is how
    many decimals it shows. `higher_is_better` is its good direction (None: neither, e.g. a build time).
    `judged` says how the gate judges it against the baseline (JUDGED), with the tolerance under its name in the
    thresholds file; None: not gated. `reader` returns its value from a case (default: the field of the same
    name); `only` says which cases have it (default: all); `cell` overrides its run-table cell; `reference` True
    shows "ref" for fp32's row (a change against fp32); `in_table` False keeps it out of the run table,
    `in_compare` out of `compare`'s table (default: only the judged ones and the latency are compared there);
    `signed` allows negative values.
    """

    name: str
    heading: str
    unit: str
    meaning: str
    higher_is_better: bool | None = None
    judged: str | None = None
    digits: int = 2
    reader: Callable[[CaseResult], float | None] | None = None
    only: Callable[[CaseResult], bool] | None = None
    cell: Callable[[CaseResult], str] | None = None
    reference: bool = False
    in_table: bool = True
    in_compare: bool | None = None
    signed: bool = False

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise HarnessError(f"metric {self.name}: unit {self.unit!r} is not one of {UNITS}")
        if self.judged is not None and (self.judged not in JUDGED or self.higher_is_better is None):
            raise HarnessError(f"metric {self.name}: a judged metric needs a kind in {JUDGED} and a direction")

    @property
    def compared(self) -> bool:
        """Return True when `compare` shows it."""
        return self.in_compare if self.in_compare is not None else self.judged is not None

    def read(self, case: CaseResult) -> float | None:
        """Return the metric's value in `case` (None when the case has none)."""
        if self.reader is not None:
            return self.reader(case)
        return _number(getattr(case, self.name, None))

    def applies(self, case: CaseResult) -> bool:
        """Return True when `case` has this metric (e.g. a speedup is a variant's, not fp32's)."""
        return self.only(case) if self.only is not None else True

    def format(self, value: float | None, *, signed: bool = False) -> str:
        """Return `value` in the metric's unit: "97.80%", "44.75" (MB), "0.557" (G), "1.23x", "-" for None."""
        if value is None:
            return "-"
        sign = "+" if signed else ""
        if self.unit == "fraction":
            return f"{value * 100:{sign}.{self.digits}f}" + ("" if signed else "%")
        if self.unit == "ratio":
            return f"{value:{sign}.{self.digits}f}x"
        scale, _ = _SCALE.get(self.unit, (1.0, ""))
        return f"{value / scale:{sign}.{self.digits}f}"

    def change(self, old: float | None, new: float | None) -> str:
        """Return the change from `old` to `new`: points for a fraction ("+0.20pt"), else relative ("+1.5%")."""
        if old is None or new is None:
            return ""
        if self.unit == "fraction":
            return f"{(new - old) * 100:+.2f}pt"
        return f"{new / old - 1:+.1%}" if old else ""

    def table_cell(self, case: CaseResult) -> str:
        """Return the metric's cell in the run table of a measured case."""
        if self.reference and case.variant == REFERENCE:
            return "ref"
        if self.cell is not None:
            return self.cell(case)
        return self.format(self.read(case), signed=self.signed)


MEASURED = "harness.metric"
"""The dataclass field metadata key under which a CaseResult field declares its Metric."""


def measured(metric: Metric, *, required: bool = False, default_factory: Callable[[], Any] | None = None) -> Any:
    """Return a dataclass field that declares `metric` (see `declared`): required (no default) when asked, else
    made by `default_factory`, else None."""
    metadata = {MEASURED: metric}
    if required:
        return dataclasses.field(metadata=metadata)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=None, metadata=metadata)


def declared(cls: type, extra: tuple[Metric, ...] = ()) -> tuple[Metric, ...]:
    """Return the metrics `cls`'s fields declare, in field order, then `extra` (metrics kept outside a field)."""
    found = tuple(f.metadata[MEASURED] for f in dataclasses.fields(cls) if MEASURED in f.metadata)
    metrics = (*found, *extra)
    names = [m.name for m in metrics]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HarnessError(f"metrics declared twice: {', '.join(repeated)}")
    return metrics


def find(metrics: tuple[Metric, ...], name: str) -> Metric:
    """Return the metric called `name` among `metrics`; an unknown name raises HarnessError listing the valid ones."""
    for metric in metrics:
        if metric.name == name:
            return metric
    raise HarnessError(f"unknown metric {name!r}: choose from {', '.join(m.name for m in metrics)}")


def ratio_value(name: str) -> Callable[[CaseResult], float | None]:
    """Return a reader of the timing ratio `name` of a case (None when the case has none)."""

    def read(case: CaseResult) -> float | None:
        return _number((case.ratios.get(name) or {}).get("value"))

    return read


def ratio_log_se(case: CaseResult, name: str) -> float:
    """Return the standard error of log(ratio `name`) measured in the case's own rounds (0.0 when unknown)."""
    value = _number((case.ratios.get(name) or {}).get("log_se"))
    return value if value is not None and value >= 0 else 0.0
