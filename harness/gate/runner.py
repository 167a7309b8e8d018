"""One process's gate: its settings, its sessions, each case measured and judged, and the run's record.

The gate's pytest plugin (harness/pytest_gate/) drives it one case at a time; nothing here imports pytest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from harness import techniques
from harness.contention import BusyRule
from harness.env import env_key, fingerprint
from harness.errors import HarnessError
from harness.gate.budget import costs_of, plan_rounds
from harness.gate.cases import GateCase, gate_cases, planned_timing_checks, unrunnable
from harness.gate.checks import (
    FAIL,
    IMPROVED,
    INFO,
    UNJUDGED,
    Check,
    TimingTest,
    baseline_checks,
    check_accuracy,
    not_ok,
    speedup_floor_test,
)
from harness.gate.metrics import METRICS, REFERENCE
from harness.gate.remeasure import Request, remeasure
from harness.gate.spreads import SpreadModel
from harness.gate.store import (
    UPDATE_HINT,
    Baseline,
    BaselineEntry,
    baseline_key,
    load_baseline,
    write_baseline,
)
from harness.gate.thresholds import Thresholds, load_thresholds
from harness.machine import fix_threads, pin_allocator
from harness.pipeline import (
    MIN_ROUNDS,
    BuiltVariant,
    Session,
    build_variant,
    measure_case,
    open_session,
    run_record,
    skipped_case,
)
from harness.results import CaseResult, RunRecord
from harness.timing_stats import LOOK_WEIGHTS, HolmFamily, Look, look_at, screen_cut


@dataclass(frozen=True)
class GateSettings:
    """What one gate run measures and where it reads and writes; parsed and validated by the caller."""

    devices: tuple[str, ...]
    variants: tuple[str, ...]
    batch_sizes: dict[str, tuple[int, ...]]
    budget_s: float
    threads: int
    require_gpu: bool
    cuda_available: bool
    data: str
    weights: str | None
    baselines_dir: Path
    thresholds_path: Path | None
    update_baselines: bool
    force_baselines: bool
    results_json: Path | None
    command: str
    xdist_workers: int = 0
    model: str = "resnet18"
    """The model spec's canonical name (model_spec.ModelSpec.arch), the `arch` of every case's identity."""
    unjudged: str = "fail"
    """What a planned check left unjudged does to the run: "fail" (the case fails, listing it) or "warn" (the summary
    lists it and the case passes on what was judged); project_keys.UNJUDGED_POLICIES."""

    @property
    def cases(self) -> list[GateCase]:
        """Return every case of the run, device-major."""
        return gate_cases(self.variants, self.devices, self.batch_sizes)


REMEASURE_BASE_S = 300.0
REMEASURE_PER_S = 3.0
"""A re-measuring process may take REMEASURE_BASE_S (start-up: torch, data, the cached model and compiled variant)
plus REMEASURE_PER_S times what building the variant and fp32 and the first timing took in this process."""


@dataclass
class Measured:
    """A measured case, the built variant that ran it, and its device."""

    result: CaseResult
    built: BuiltVariant
    device: torch.device


@dataclass
class Gate:
    """What one process shares between cases: sessions per device, thresholds, baselines, the Holm family."""

    settings: GateSettings
    sessions: dict[str, Session] = field(default_factory=dict)
    cases: dict[str, CaseResult] = field(default_factory=dict)
    broken: dict[tuple[str, str], str] = field(default_factory=dict)
    baselines: dict[str, Baseline | None] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)
    planned: list[GateCase] | None = None
    """The cases this run will judge (pytest's selection); None: every case of the settings."""
    _thresholds: Thresholds | None = None
    _environment: dict[str, object] | None = None
    _family: HolmFamily | None = None
    _spreads: dict[str, SpreadModel] = field(default_factory=dict)
    _rounds: dict[str, int] | None = None

    def __post_init__(self) -> None:
        """Fix the thread count and the allocator before anything is built or timed, and remember both."""
        self.machine = {"threads": fix_threads(self.settings.threads), **pin_allocator()}

    @property
    def thresholds(self) -> Thresholds:
        """Return the reviewed thresholds (settings.thresholds_path, default harness/gate/thresholds.json)."""
        if self._thresholds is None:
            self._thresholds = load_thresholds(self.settings.thresholds_path)
        return self._thresholds

    @property
    def family(self) -> HolmFamily:
        """Return the run's family of timing checks: every one the planned cases can make (Holm, family_alpha)."""
        if self._family is None:
            planned = self.settings.cases if self.planned is None else self.planned
            runnable = [c for c in planned if self.skip_reason(c) is None]
            size = planned_timing_checks(runnable, self.thresholds, self.environment)
            self._family = HolmFamily(size, self.thresholds.timing.family_alpha)
        return self._family

    @property
    def environment(self) -> dict[str, object]:
        """Return this process's fingerprint plus how the gate set up the machine."""
        if self._environment is None:
            self._environment = {**fingerprint(), "timing_setup": self.machine}
        return self._environment

    @property
    def busy_rule(self) -> BusyRule:
        """Return when a timing counts as disturbed and how long to wait for a quiet machine (thresholds timing)."""
        timing = self.thresholds.timing
        return BusyRule(timing.busy_limit, timing.busy_wait_s, timing.busy_retries)

    def env_key(self, device: str) -> str:
        """Return the baseline key of this environment on `device`."""
        return env_key(self.environment, device)

    def baseline(self, device: str) -> Baseline | None:
        """Return the stored baseline of this environment on `device`, or None when there is none."""
        key = baseline_key(self.env_key(device), self.settings.model)
        if key not in self.baselines:
            self.baselines[key] = load_baseline(self.settings.baselines_dir, key)
        return self.baselines[key]

    def session(self, device: torch.device) -> Session:
        """Return the one Session of this process on `device` (data and fp32 model loaded once)."""
        if device.type not in self.sessions:
            self.sessions[device.type] = open_session(
                data=self.settings.data, device=str(device), weights=self.settings.weights, arch=self.settings.model,
                progress=False,
            )
        return self.sessions[device.type]

    def skip_reason(self, case: GateCase) -> tuple[str, str] | None:
        """Return ("skip" | "fail", why) when `case` cannot run here, else None."""
        return unrunnable(
            case,
            cuda_available=self.settings.cuda_available,
            require_gpu=self.settings.require_gpu,
            technique_reason=lambda: techniques.variant_skip_reason(case.variant, case.device),
        )

    # ------------------------------------------------------------------------------------ measuring

    def broken_reason(self, case: GateCase) -> str | None:
        """Return why `case` fails unmeasured: its device's session or its variant's build already failed."""
        for known in (("", case.device), (case.variant, case.device)):
            if known in self.broken:
                return f"{case.case_id}: {self.broken[known]}"
        return None

    def measure(self, case: GateCase, device: torch.device) -> Measured:
        """Return the case measured once (see broken_reason first: a failed build is not retried)."""
        key, session_key = (case.variant, case.device), ("", case.device)
        try:
            session = self.session(device)
        except Exception as err:
            self.broken[session_key] = f"no {case.device} session (data, model): {type(err).__name__}: {err}"
            self.record_unmeasured(case, self.broken[session_key], "error")
            raise
        try:
            built = build_variant(session, case.variant)
        except Exception as err:
            self.broken[key] = f"building {case.variant} on {case.device} failed: {type(err).__name__}: {err}"
            self.record_unmeasured(case, self.broken[key], "error")
            raise
        try:
            rounds = self.rounds_for(case)
            result = measure_case(session, case.variant, case.batch_size, budget_s=self.settings.budget_s,
                                  busy=self.busy_rule, rounds=rounds)
            if rounds is not None:
                result.extra["rounds_planned"] = rounds
        except Exception as err:
            self.record_unmeasured(case, f"measuring {case.case_id} failed: {type(err).__name__}: {err}", "error")
            raise
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result.extra["env_key"] = self.env_key(case.device)
        self.record(result)
        return Measured(result, built, device)

    def record_unmeasured(self, case: GateCase, why: str, status: str) -> None:
        """Record that `case` was not measured ("skipped" or "error"), and why."""
        self.record(skipped_case(case.variant, case.device, case.batch_size, why, status=status))

    def record(self, case: CaseResult) -> None:
        """Keep a case for the run's record (a later record of the same case replaces it)."""
        self.cases[case.case_id] = case

    def run_record(self) -> RunRecord:
        """Return this process's RunRecord of every case it ran or skipped."""
        session = next(iter(self.sessions.values()), None)
        weights = self.settings.weights or "the harness's default"
        return run_record(
            list(self.cases.values()),
            command=self.settings.command,
            session=session,
            data=self.settings.data,
            model=session.model.label if session else f"{self.settings.model} ({weights})",
            environment=self.environment,
        )

    # ------------------------------------------------------------------------------------- judging

    def reference(self, case: CaseResult, device: torch.device) -> CaseResult:
        """Return fp32's case on the same device and batch size: per-image correctness, no timing needed."""
        ref = build_variant(self.session(device), REFERENCE)
        return replace(
            skipped_case(REFERENCE, case.device, case.batch_size, ""),
            status="ok",
            reason=None,
            top1=ref.eval.top1,
            top5=ref.eval.top5,
            eval_images=ref.eval.n,
            correct=[bool(c) for c in ref.eval.correct],
        )

    def judge(self, measured: Measured) -> list[Check]:
        """Return every check of a measured case, timing ones confirmed; they are kept in the case's record."""
        case, th = measured.result, self.thresholds
        checks: list[Check] = [check_accuracy(case, self.reference(case, measured.device), th)]
        entry, found = self._baseline_entry(case)
        checks.extend(found)
        items = self.timing_items(case, entry)
        checks.extend(item for item in items if isinstance(item, Check))
        tests = [item for item in items if isinstance(item, TimingTest)]
        checks.extend(self.judge_timing(measured, entry, tests))
        case.checks = [c.to_dict() for c in checks]
        self.record(case)
        return checks

    def _baseline_entry(self, case: CaseResult) -> tuple[BaselineEntry | None, list[Check]]:
        """Return the case's baseline entry and, when there is none to check against, a check per metric the
        baseline would judge saying why (unjudged; info when --update-baselines records instead of judging)."""
        source = str(self.settings.baselines_dir)
        metrics = [m.name for m in METRICS if m.applies(case)]
        if self.settings.update_baselines:
            why = "not checked: --update-baselines records this run as the baseline instead of judging against it"
            return None, [Check(case.case_id, "baseline", INFO, None, None, None, source, why)]
        baseline = self.baseline(case.device)
        if baseline is None:
            key = baseline_key(self.env_key(case.device), self.settings.model)
            why = f"no baseline for {key} in {source}; record one with {UPDATE_HINT}"
        elif case.case_id not in baseline.entries:
            source = str(baseline.path)
            why = f"{baseline.path} has no entry for {case.case_id}; add it with {UPDATE_HINT}"
        else:
            return baseline.entries[case.case_id], []
        return None, [Check(case.case_id, name, UNJUDGED, None, None, None, source, why) for name in metrics]

    def timing_items(self, case: CaseResult, entry: BaselineEntry | None) -> list[Check | TimingTest]:
        """Return the case's floor test and its checks against the baseline entry (timing ones as tests)."""
        items: list[Check | TimingTest] = []
        if case.status != "ok":
            return [not_ok(case, "baseline", str(self.settings.baselines_dir))]
        spreads = self.spreads(case.device)
        if case.variant != REFERENCE:
            sd, dof = spreads.case_spread(case.case_id, case.device, case.batch_size)
            items.append(speedup_floor_test(case, self.thresholds, sd, dof, self.environment))
        if entry is not None:
            baseline = self.baseline(case.device)
            items.extend(baseline_checks(case, entry, self.thresholds, str(baseline.path if baseline else ""),
                                         spreads))
        return items

    def rounds_for(self, case: GateCase) -> int | None:
        """Return the rounds the run's plan gives `case` (harness/gate/budget.py: rounds where the noise is, within
        the default budget's total time), or None when its baseline cannot plan it (the budget decides)."""
        if self._rounds is None:
            self._rounds = {}
            planned = self.settings.cases if self.planned is None else self.planned
            for device in {c.device for c in planned}:
                baseline = self.baseline(device) if not self.settings.update_baselines else None
                if baseline is None:
                    continue
                costs = costs_of([c for c in planned if c.device == device and self.skip_reason(c) is None],
                                 baseline, self.spreads(device), budget_s=self.settings.budget_s,
                                 min_rounds=MIN_ROUNDS)
                self._rounds.update(plan_rounds(costs, min_rounds=MIN_ROUNDS))
        return self._rounds.get(case.case_id)

    def spreads(self, device: str) -> SpreadModel:
        """Return the spread model of this environment's baseline on `device` (the thresholds' prior without one)."""
        key = baseline_key(self.env_key(device), self.settings.model)
        if key not in self._spreads:
            baseline = self.baseline(device)
            self._spreads[key] = SpreadModel.of(baseline.entries if baseline else {}, self.thresholds)
        return self._spreads[key]

    def timing_unjudged(self, case: CaseResult) -> str | None:
        """Return why the case's timing cannot be judged here, or None when it can."""
        workers = self.settings.xdist_workers
        if case.device == "cpu" and workers > 1:
            return (
                f"{workers} pytest-xdist workers share this CPU, so their timings disturb each other; run the gate "
                "alone (python -m pytest bench -p no:xdist) to judge timing"
            )
        gpu = case.extra.get("gpu_state")
        if case.device == "cuda" and isinstance(gpu, dict) and gpu.get("unjudged"):
            return f"{gpu['unjudged']} while the case was timed ({gpu.get('summary')}); run the gate on an idle GPU"
        limit = self.thresholds.timing.busy_limit
        if case.contention is not None and case.contention > limit:
            found = case.extra.get("busy_waits")
            waits = [str(w) for w in found] if isinstance(found, list) else []
            waited = f" ({len(waits)} more timings after waiting for a quiet machine: {'; '.join(waits)})" if waits \
                else ""
            return (
                f"the machine was busy: others held the process back {case.contention:.0%} of the time the case was "
                f"timed (limit {limit:.0%}){waited}; run the gate on a quiet machine"
            )
        return None

    def judge_timing(self, measured: Measured, entry: BaselineEntry | None, tests: list[TimingTest]) -> list[Check]:
        """Return the timing checks: whatever the first measurement flags is re-measured in fresh processes, one at a
        time, until the evidence decides (timing_stats.look_at: Holm's procedure over the run on the looks' p-value)
        or the looks run out; a check never flagged is judged on its first run alone and never fails."""
        case = measured.result
        why = self.timing_unjudged(case) if tests else None
        if why:
            return [_unjudged(t, why) for t in tests]
        suspects = [t for t in tests if t.flagged(self.thresholds.timing.screen_alpha)]
        decided = self.confirm(measured, entry, suspects) if suspects else {}
        return [decided[t.key] if t in suspects else self._timing_check(t) for t in tests]

    def confirm(self, measured: Measured, entry: BaselineEntry | None, suspects: list[TimingTest]) -> dict[str, Check]:
        """Re-time the case in fresh processes, one at a time (LOOK_WEIGHTS looks at most), until every suspect is
        decided; return {check key: its Check}. A re-measurement that cannot complete leaves the undecided ones
        unjudged: a flagged check is never passed unconfirmed."""
        case = measured.result
        runs: dict[str, list[TimingTest]] = {t.key: [t] for t in suspects}
        looks: dict[str, Look] = {}
        measurements: list[dict[str, object]] = []
        open_keys = [t.key for t in suspects]
        failure = ""
        for weight in LOOK_WEIGHTS:
            retested = self._retest(measured, entry, case, measurements)
            if isinstance(retested, str):
                failure = retested
                break
            for key in open_keys:
                if key not in retested:
                    failure = "the re-measurement made no such test"
                    break
                runs[key].append(retested[key])
                looks[key] = self._look(runs[key], looks.get(key), weight)
            if failure:
                break
            open_keys = [key for key in open_keys if looks[key].decision == "continue"]
            if not open_keys:
                break
        case.confirmation = {"process": "fresh", "measurements": measurements, "looks": len(measurements)}
        decided = {}
        for test in suspects:
            reason = failure if test.key in open_keys and failure else ""
            decided[test.key] = self._suspect_check(runs[test.key], looks.get(test.key), reason)
        return decided

    def _retest(
        self, measured: Measured, entry: BaselineEntry | None, case: CaseResult, measurements: list[dict[str, object]]
    ) -> dict[str, TimingTest] | str:
        """Return the case's timing tests re-measured in one more fresh process, or why that could not be judged."""
        try:
            ratios, contention = self.retime(measured)
        except HarnessError as err:
            return f"{err} (re-measuring {case.case_id})"
        measurements.append({"ratios": ratios, "contention": contention})
        again = replace(case, ratios=ratios, contention=contention)
        why = self.timing_unjudged(again)
        if why:
            return f"{why} (during re-measurement {len(measurements)})"
        return {t.key: t for t in self.timing_items(again, entry) if isinstance(t, TimingTest)}

    def _look(self, runs: list[TimingTest], before: Look | None, weight: float) -> Look:
        first = runs[0]
        return look_at(
            [math.log(t.value) for t in runs], [t.log_se for t in runs], first.spread,
            higher_is_better=first.higher_is_better, exact_center=first.exact_center, tolerance=first.tolerance,
            looked_p=before.p_value if before else 1.0, weight=weight,
            rejects=lambda p: self.family.peek(first.key, p)[0],
        )

    def retime(self, measured: Measured) -> tuple[dict[str, dict[str, float]], float | None]:
        """Return the case's timing ratios and contention, timed again in a fresh process (harness.gate.remeasure) on
        the same device as the first measurement (this worker's GPU), within a time limit scaled to the case."""
        case, s = measured.result, self.settings
        busy = self.busy_rule
        planned = case.extra.get("rounds_planned")
        request = Request(case.variant, str(measured.device), case.batch_size, s.data, s.weights, s.threads,
                          s.budget_s, s.model, busy_limit=busy.limit, busy_wait_s=busy.wait_s,
                          busy_retries=busy.retries, rounds=planned if isinstance(planned, int) else None)
        session = self.sessions.get(measured.device.type)
        reference = session.built.get(REFERENCE) if session else None
        spent = measured.built.build_seconds + (reference.build_seconds if reference else 0.0)
        timed = case.extra.get("timing_seconds")
        timing = float(timed) if isinstance(timed, int | float) else 0.0
        spent += timing * (1 + busy.retries) + busy.wait_s * busy.retries  # the child may wait for quiet too
        found = remeasure(request, timeout_s=REMEASURE_BASE_S + REMEASURE_PER_S * spent)
        if found.env_key != self.env_key(case.device):
            raise HarnessError(
                f"the re-measuring process ran as {found.env_key}, not {self.env_key(case.device)} like this one"
            )
        if found.gpu_unjudged:
            raise HarnessError(f"{found.gpu_unjudged} while the re-measuring process timed it")
        return found.ratios, found.contention

    def _timing_check(self, test: TimingTest) -> Check:
        """Return an unflagged timing check: it passes, or reports a gain that is clear at the family's level."""
        th = self.thresholds.timing
        check = Check(test.case_id, test.metric, "pass", test.value, test.limit, test.reference, test.source, "",
                      p_value=test.shift.p_worse)
        better = -test.shift.worse > math.log1p(test.tolerance)
        clear = test.shift.p_better <= th.family_alpha / self.family.size
        if test.metric != "speedup_floor" and better and clear and not test.about_one:
            return replace(check, outcome=IMPROVED, message=(
                f"faster than the baseline: {test.describe()}. Reported, never failed: refresh the baseline "
                f"with {UPDATE_HINT} to hold the gain"
            ))
        return replace(check, message=(
            f"{test.describe()}; not flagged (a first run is re-measured only when worse than half the tolerance "
            f"at p <= {th.screen_alpha:g})"
        ))

    def _suspect_check(self, runs: list[TimingTest], look: Look | None, failure: str) -> Check:
        """Return a flagged check judged on its runs: fail, pass, or unjudged when a re-measurement it still needed
        could not complete (its p-value over the looks then still counts in the run's Holm family)."""
        test = runs[0]
        check = Check(test.case_id, test.metric, "pass", test.value, test.limit, test.reference, test.source, "",
                      p_value=test.shift.p_worse)
        if look is None or failure:
            story = f"; the runs so far: {self._story(runs, look)}" if look else f"; first: {test.describe()}"
            return replace(check, outcome=UNJUDGED, message=(
                f"flagged, and its confirmation could not complete: {failure}{story}"
            ))
        rejected, threshold = self.family.judge(test.key, look.p_value)
        together = math.exp(sum(math.log(t.value) for t in runs) / len(runs))
        story = f"{self._story(runs, look)}; Holm threshold {threshold:.2g} over the run's {self.family.size} checks"
        if look.decision == "fail" and rejected:
            return replace(check, outcome=FAIL, value=together, p_value=look.p_value,
                           message=f"{story}: confirmed, worse than the {test.tolerance:.0%} tolerance")
        if look.decision == "continue" and look.again_worse > screen_cut(test.tolerance):
            # The looks ran out with the fresh processes on their own still worse than half the tolerance: neither
            # confirmed nor cleared. Fail closed: the policy (--unjudged) decides, never a silent pass.
            return replace(check, outcome=UNJUDGED, value=together, p_value=look.p_value, message=(
                f"undecided after {len(runs) - 1} fresh-process re-measurements: {story}: the runs stay worse than "
                f"half the {test.tolerance:.0%} tolerance without reaching the Holm threshold; the baseline's spread "
                f"({test.spread.dof:.3g} dof) and mean limit what a run can show: record more baseline runs "
                f"(BASELINE_RUNS=5 nox -s update_baselines) or re-run the gate"
            ))
        return replace(check, value=together, p_value=look.p_value, message=(
            f"{story}: not confirmed (failing needs the runs together beyond the tolerance at the Holm threshold and "
            "the re-measurements alone beyond half of it): machine noise, not a regression"
        ))

    @staticmethod
    def _story(runs: list[TimingTest], look: Look | None) -> str:
        first, again = runs[0], runs[1:]
        text = f"first run: {first.describe()}; re-measured in {len(again)} fresh processes: " + ", ".join(
            f"{t.value:.4g}" for t in again)
        if look is not None:
            pooled = look.pooled
            text += (
                f"; the {len(runs)} runs together {abs(pooled.change):.1%} {'worse' if pooled.worse >= 0 else 'better'}"
                f" (one-sided p={pooled.p_worse:.2g}; over the looks p={look.p_value:.2g})"
            )
        return text

    def write_baselines(self, record: RunRecord) -> list[Path]:
        """Write this run as the baseline of every device it measured (store.write_baseline's rules)."""
        return write_baseline(
            self.settings.baselines_dir,
            [record],
            command=self.settings.command,
            busy_limit=self.thresholds.timing.busy_limit,
            force=self.settings.force_baselines,
        )


def _unjudged(test: TimingTest, why: str) -> Check:
    return Check(test.case_id, test.metric, UNJUDGED, test.value, test.limit, test.reference, test.source,
                 f"not judged: {why}")
