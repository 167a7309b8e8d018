"""The fresh-process re-measurement: its command line, its plugins, its failures, and the gate's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _gate import ENV_KEY, ENVIRONMENT, TIGHT_RUNS, make_case, stored
from _gate import gate_settings as settings

from harness.errors import HarnessError
from harness.gate import remeasure as rm
from harness.gate import runner
from harness.gate.checks import Check
from harness.gate.runner import Gate, Measured
from harness.results import CaseResult


def test_the_command_line_round_trips(tmp_path: Path) -> None:
    request = rm.Request("compile", "cpu", 32, "imagefolder:/data/val", "/w/model.pt", 2, 4.0)
    argv = request.argv(tmp_path / "out.json")
    assert argv[1:3] == ["-m", "harness.gate.remeasure"]
    assert rm.parse_request(argv[3:]) == (request, tmp_path / "out.json")
    without = rm.Request("fp32", "cpu", 1, "digits", None, 2, 0.5)
    assert rm.parse_request(without.argv(tmp_path / "o.json")[3:])[0] == without


def test_add_plugin_names_each_module_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rm.PLUGINS_ENV, "mine")
    rm.add_plugin("plant_regression")
    rm.add_plugin("plant_regression")
    assert rm.os.environ[rm.PLUGINS_ENV] == "mine,plant_regression"


def test_a_plugin_that_does_not_import_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rm.PLUGINS_ENV, "json,no_such_module_here")
    with pytest.raises(HarnessError, match="names 'no_such_module_here', which does not import here"):
        rm._load_plugins()


@pytest.mark.e2e
def test_a_failing_child_raises_with_its_own_words(isolated_cache: Path) -> None:
    """A real child process: bad data fails it, and the error says what the child said."""
    request = rm.Request("fp32", "cpu", 1, "no-such-dataset", None, 1, 0.1)
    with pytest.raises(HarnessError, match=r"failed \(exit 2\): harness.gate.remeasure: unknown data spec 'no-such"):
        rm.remeasure(request, timeout_s=300)


class ChildGate(Gate):
    """A Gate whose fp32 reference is synthetic; its re-measurement goes through runner.remeasure."""

    def reference(self, case: CaseResult, device: torch.device) -> CaseResult:
        return make_case("fp32", batch_size=case.batch_size)


@pytest.fixture
def tight_baseline(tmp_path: Path) -> Path:
    folder = tmp_path / "baselines"
    stored(folder, *[[make_case("fp32"), make_case(speedup=s)] for s in TIGHT_RUNS])
    return folder


def judge_with_child(folder: Path, monkeypatch: pytest.MonkeyPatch, child: rm.Remeasured) -> dict[str, Check]:
    seen: list[rm.Request] = []

    def fake_remeasure(request: rm.Request, *, timeout_s: float = rm.TIMEOUT_S) -> rm.Remeasured:
        seen.append(request)
        return child

    monkeypatch.setattr(runner, "remeasure", fake_remeasure)
    gate = ChildGate(settings(folder))
    gate._environment = dict(ENVIRONMENT)
    measured = Measured(make_case(speedup=2.95), SimpleNamespace(build_seconds=0.0), torch.device("cpu"))  # type: ignore[arg-type]
    checks = {c.metric: c for c in gate.judge(measured)}
    busy = gate.busy_rule
    assert seen == [rm.Request("static_int8", "cpu", 1, "digits", None, gate.settings.threads, 0.1,
                               busy_limit=busy.limit, busy_wait_s=busy.wait_s, busy_retries=busy.retries)]
    return checks


def test_a_child_that_ran_in_another_environment_is_refused(
    tight_baseline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = rm.Remeasured(make_case(speedup=2.9).ratios, 0.0, "cpu-elsewhere-1t-torch2.14", {})
    check = judge_with_child(tight_baseline, monkeypatch, other)["speedup_vs_fp32"]
    assert check.outcome == "unjudged" and "ran as cpu-elsewhere-1t-torch2.14" in check.message


def test_a_child_in_the_same_environment_confirms(tight_baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    same = rm.Remeasured(make_case(speedup=2.9).ratios, 0.0, ENV_KEY, {})
    check = judge_with_child(tight_baseline, monkeypatch, same)["speedup_vs_fp32"]
    assert check.outcome == "fail"


def test_a_child_whose_gpu_throttled_cannot_confirm(tight_baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    throttled = rm.Remeasured(make_case(speedup=2.9).ratios, 0.0, ENV_KEY, {},
                              gpu_unjudged="the GPU throttled: the power policy held the clocks down for 300 ms")
    check = judge_with_child(tight_baseline, monkeypatch, throttled)["speedup_vs_fp32"]
    assert check.outcome == "unjudged"
    assert "held the clocks down for 300 ms while the re-measuring process timed it" in check.message


def test_the_childs_gpu_verdict_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "remeasured.json"
    found = {"ratios": make_case(speedup=2.9).ratios, "contention": 0.0, "env_key": ENV_KEY, "latency_ms": {}}
    path.write_text(json.dumps({**found, "gpu_state": {"unjudged": "another process used the GPU (pid 7)"}}))
    assert rm.read_remeasured(path).gpu_unjudged == "another process used the GPU (pid 7)"
    path.write_text(json.dumps({**found, "gpu_state": None}))
    assert rm.read_remeasured(path).gpu_unjudged is None
