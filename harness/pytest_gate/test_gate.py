"""The regression gate's one test: every variant x device x batch size, measured once and judged (harness.gate).

It ships with the package, so any project runs it (`python -m harness gate`) with the plugin beside it (plugin.py)
parametrizing it; this repository's bench/test_gate.py collects the same function.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.errors import HarnessError
from harness.gate.cases import GateCase
from harness.gate.runner import Gate, Measured
from harness.gate.summary import extra_info
from harness.measure import timing_input


def record_benchmark(benchmark: Any, gate: Gate, measured: Measured) -> None:
    """Time the variant once more through pytest-benchmark, for --benchmark-json/-autosave/compare.

    The gate judges its own interleaved timing, not this one; under pytest-xdist pytest-benchmark turns itself
    off and calls the target once.
    """
    case, device = measured.result, measured.device
    benchmark.extra_info.update(extra_info(case, gate.env_key(case.device), gate.environment))
    x = timing_input(case.batch_size, device)
    state = measured.built.state

    def target() -> None:
        with torch.inference_mode():
            state(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    median = float(case.latency_ms.get("median", 0.0))
    rounds = max(3, min(50, int(gate.settings.budget_s * 250.0 / median))) if median > 0 else 50
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=1, iterations=1)


# A case that is skipped or fails before it is timed never uses the benchmark fixture; that is not news.
@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
def test_gate(
    case: GateCase, gate: Gate, case_device: torch.device, benchmark: Any, request: pytest.FixtureRequest
) -> None:
    """Accuracy against fp32 on the same images, speedup against its floor, every metric against the baseline."""
    verdict = gate.skip_reason(case) or (("fail", why) if (why := gate.broken_reason(case)) else None)
    if verdict is not None:
        outcome, why = verdict
        gate.record_unmeasured(case, why, "error" if outcome == "fail" else "skipped")
        if outcome == "fail":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    measured = gate.measure(case, case_device)
    record_benchmark(benchmark, gate, measured)
    try:
        checks = gate.judge(measured)
    except HarnessError as err:  # a broken baseline file: its one line, not a traceback
        pytest.fail(str(err), pytrace=False)
    request.node.user_properties.append(("gate_checks", [c.to_dict() for c in checks]))
    benchmark.extra_info["checks"] = {c.metric: c.outcome for c in checks}
    failed = [c.line() for c in checks if c.failed]
    unjudged = [c.line() for c in checks if c.unjudged]
    if unjudged and gate.settings.unjudged == "fail":
        failed += [*unjudged, f"{len(unjudged)} planned checks of this case were not judged, and --unjudged fail "
                   "makes that a failure (--unjudged warn passes on what was judged)"]
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
