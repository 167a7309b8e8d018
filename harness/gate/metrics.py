"""The metrics the gate judges against a baseline: those harness/results.py declares with a `judged` kind."""

from __future__ import annotations

from harness.metrics import JUDGED, REFERENCE, Metric, find, ratio_log_se, ratio_value
from harness.results import METRICS as ALL_METRICS

__all__ = [
    "JUDGED",
    "METRICS",
    "METRIC_NAMES",
    "REFERENCE",
    "TIMING_FIELDS",
    "TIMING_METRICS",
    "Metric",
    "get_metric",
    "ratio_log_se",
    "ratio_value",
]

METRICS: tuple[Metric, ...] = tuple(m for m in ALL_METRICS if m.judged is not None)
"""The judged metrics, each with `kind` (JUDGED), `higher_is_better`, `read(case)` and `applies(case)`. The
speedup is a variant's (fp32 is its denominator), the latency against the yardstick is fp32's (a variant's own
latency is fp32's times its speedup, so judging it again would fail every variant for one regression of the
model)."""
METRIC_NAMES = tuple(m.name for m in METRICS)
TIMING_METRICS = tuple(m for m in METRICS if m.judged == "timing")
TIMING_FIELDS = ("latency_median_ms",)
"""Absolute latency is stored per baseline run and shown, but not judged: between processes on a shared machine it
moves with the host's load (see README); the latency against the yardstick judges the same thing without that."""


def get_metric(name: str) -> Metric:
    """Return the judged metric called `name`; an unknown name lists the valid ones."""
    return find(METRICS, name)
