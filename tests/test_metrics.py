"""Metrics are declared once, on the CaseResult field that keeps them; every reader enumerates that one list."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from _gate import make_case, make_record

from harness.compare import COMPARED, compare_runs, format_markdown, format_text
from harness.errors import HarnessError
from harness.gate import metrics as gate_metrics
from harness.gate.summary import extra_info
from harness.gate.thresholds import load_thresholds
from harness.metrics import Metric, declared, measured
from harness.report import median_interval
from harness.results import METRICS, CaseResult, case_from_dict, case_to_dict, get_metric
from harness.table import COLUMNS, markdown_table, text_table


def test_every_reader_enumerates_the_declared_metrics() -> None:
    case = make_case("static_int8", speedup=2.0)
    assert ("method", "bs", *(m.heading for m in METRICS if m.in_table)) == COLUMNS
    assert [m.name for m in COMPARED] == [m.name for m in METRICS if m.compared and m.judged] + [
        m.name for m in METRICS if m.compared and not m.judged
    ]
    assert set(extra_info(case, "key", {})["metrics"]) == {m.name for m in METRICS if m.applies(case)}
    assert {m.name for m in gate_metrics.METRICS} == {m.name for m in METRICS if m.judged}
    tolerances = load_thresholds(None).tolerances
    assert set(tolerances) == {m.name for m in METRICS if m.judged}, "a judged metric needs its tolerance"


def test_a_field_declared_as_measured_is_a_metric_of_the_case() -> None:
    latency = Metric("warm_ms", "warm ms", "ms", "a test metric", False)
    extended = dataclasses.make_dataclass(
        "Extended", [("warm_ms", float | None, measured(latency))], bases=(CaseResult,)
    )
    assert declared(extended)[-1] is latency and declared(CaseResult) == METRICS[: len(declared(CaseResult))]
    with pytest.raises(HarnessError, match="declared twice"):
        declared(extended, extra=(latency,))


def test_a_judged_metric_must_say_its_direction_and_kind() -> None:
    with pytest.raises(HarnessError, match="direction"):
        Metric("x", "x", "ms", "no direction", None, "timing")
    with pytest.raises(HarnessError, match="unit"):
        Metric("x", "x", "furlongs", "a unit no one formats", True)


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [("top1", 0.978, "97.80%"), ("size_bytes", 44_800_000, "44.80"), ("macs", 1_814_000_000, "1.814"),
     ("speedup_vs_fp32", 1.234, "1.23x"), ("latency_vs_yardstick", 0.98123, "0.981x"), ("top1", None, "-")],
)
def test_each_metric_formats_its_own_unit(name: str, value: float | None, text: str) -> None:
    assert get_metric(name).format(value) == text


def test_a_fraction_changes_in_points_and_the_rest_relatively() -> None:
    assert get_metric("top1").change(0.978, 0.98) == "+0.20pt"
    assert get_metric("size_bytes").change(100.0, 150.0) == "+50.0%"
    assert get_metric("size_bytes").change(None, 150.0) == ""


def test_fp32_reads_ref_where_a_metric_is_a_change_against_it() -> None:
    row = text_table([make_case("fp32"), make_case("static_int8", speedup=2.0)]).splitlines()
    fp32, variant = row[2], row[3]
    assert fp32.count(" ref") == 2 and "2.00x" in variant
    assert "| static_int8 | 1 |" in markdown_table([make_case("static_int8")])


def test_compare_shows_every_compared_metric_with_its_change() -> None:
    old, new = make_record([make_case("fp32")]), make_record([make_case("fp32", size_bytes=12_000_000)])
    deltas = compare_runs(old, new, load_thresholds(None))
    text = format_text(deltas)
    for metric in COMPARED:
        assert (metric.heading if metric.judged else f"{metric.heading} (not judged)") in text
    assert "12.00 (+1.7%)" in text and "12.00 (+1.7%)" in format_markdown(deltas, Path("a"), Path("b"))


def test_the_record_checks_each_field_by_its_annotation(tmp_path: Path) -> None:
    obj = json.loads(json.dumps(case_to_dict(make_case("fp32"))))
    assert case_from_dict(obj) == make_case("fp32")
    for field, bad in [("size_bytes", 1.5), ("top1", "high"), ("latency_ms", []), ("top1", -0.1)]:
        with pytest.raises(HarnessError, match=field):
            case_from_dict({**obj, field: bad})
    assert case_from_dict({**obj, "top1_change": -0.02}).top1_change == -0.02  # a signed metric may be negative


def test_the_median_interval_covers_the_median_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    trials = 2000
    for _ in range(trials):
        low, high = median_interval(rng.lognormal(0.0, 0.3, 40).tolist())
        covered += low <= 1.0 <= high  # the lognormal's median is exp(0) = 1
    assert 0.93 <= covered / trials <= 0.99
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert math.isclose(median_interval([5.0])[0], 5.0)
