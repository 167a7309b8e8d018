"""The regression gate: every registered variant x device x batch size, measured once, checked three ways."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench.conftest import Gate, GateCase, judge, record_benchmark


# A case that is skipped or fails before it is timed never uses the benchmark fixture; that is not news.
@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
def test_gate(
    case: GateCase, gate: Gate, case_device: torch.device, benchmark: Any, request: pytest.FixtureRequest
) -> None:
    """Accuracy vs fp32 on the same images, speedup vs the variant's floor, and the stored baseline."""
    gate.check_runnable(case)
    measured = gate.measure(case, case_device)
    record_benchmark(benchmark, gate, measured)
    judge(gate, measured, request.node, benchmark)
