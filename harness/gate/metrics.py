"""The metrics the gate judges against a baseline, each declared once with how it is judged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.results import CaseResult

REFERENCE = "fp32"
KINDS = ("accuracy", "exact", "memory", "timing")
"""accuracy: paired test on per-image correctness of the same model and images; exact: deterministic sizes, any
change beyond the tolerance is real and an unexplained gain fails as stale; memory: the per-call peak, nearly
deterministic, a gain is reported only; timing: a ratio judged against the spread of the baseline's runs."""


@dataclass(frozen=True)
class Metric:
    """A metric of a case: its name, how it is judged (`kind`), its good direction, and where a case keeps it.

    `applies` says which cases have it: the speedup is a variant's (fp32 is its denominator), the latency against
    the yardstick is fp32's (a variant's own latency is fp32's times its speedup, so judging it again would
    fail every variant for one regression of the model).
    """

    name: str
    kind: str
    higher_is_better: bool
    read: Callable[[CaseResult], float | None]
    applies: Callable[[CaseResult], bool] = lambda case: True


def ratio_value(name: str) -> Callable[[CaseResult], float | None]:
    """Return a reader of the timing ratio `name` of a case (None when the case has none)."""

    def read(case: CaseResult) -> float | None:
        value = (case.ratios.get(name) or {}).get("value")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return read


def ratio_log_se(case: CaseResult, name: str) -> float:
    """Return the standard error of log(ratio `name`) measured in the case's own rounds (0.0 when unknown)."""
    value = (case.ratios.get(name) or {}).get("log_se")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0.0


METRICS: tuple[Metric, ...] = (
    Metric("top1", "accuracy", True, lambda c: c.top1),
    Metric("size_bytes", "exact", False, lambda c: c.size_bytes),
    Metric("compressed_size_bytes", "exact", False, lambda c: c.compressed_size_bytes),
    Metric("macs", "exact", False, lambda c: c.macs),
    Metric("peak_memory_bytes", "memory", False, lambda c: c.peak_memory_bytes),
    Metric("speedup_vs_fp32", "timing", True, ratio_value("speedup_vs_fp32"), lambda c: c.variant != REFERENCE),
    Metric(
        "latency_vs_yardstick", "timing", False, ratio_value("latency_vs_yardstick"), lambda c: c.variant == REFERENCE
    ),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
TIMING_METRICS = tuple(m for m in METRICS if m.kind == "timing")
TIMING_FIELDS = ("latency_median_ms",)
"""Absolute latency is stored per baseline run and shown, but not judged: between processes on a shared machine it
moves with the host's load (see README); the latency against the yardstick judges the same thing without that."""


def get_metric(name: str) -> Metric:
    """Return the metric called `name`; an unknown name lists the valid ones."""
    from harness.errors import HarnessError

    for metric in METRICS:
        if metric.name == name:
            return metric
    raise HarnessError(f"unknown metric {name!r}: choose from {', '.join(METRIC_NAMES)}")
