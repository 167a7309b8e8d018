"""Head against base on one machine in one job: two workers, their cases timed in interleaved rounds, judged.

`compare(settings, base, head)` starts one worker per side (harness/ab/client.py), has both build every variant
and evaluate it on the same images, times each case round by round (base then head, head then base, ...), and
judges it (harness/ab/judge.py). Cases whose slowdown is flagged are timed again in two fresh workers to confirm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.ab.client import SideWorker
from harness.ab.judge import (
    FLAGGED,
    IMPROVEMENT,
    REGRESSION,
    SAME,
    UNJUDGED,
    AccuracyChange,
    Burst,
    LatencyChange,
    TimingRule,
    accuracy_change,
    exact_change,
    latency_change,
)
from harness.contention import BusyRule, Contention, wait_until_quiet
from harness.errors import HarnessError
from harness.gate.thresholds import Thresholds, device_kind
from harness.results import case_id
from harness.timing_stats import HolmFamily

BURST_S = 0.05
"""Seconds of timed calls a side runs per round at least (more pairs per burst for a fast model)."""
REWARM_LIMIT_S = 0.25
"""A burst starts with one untimed call of the model and the yardstick when such a pair takes less than this: the
other side has just run, and the first call after it finds cold caches (a no-change comparison of a 3 ms model
read +8%, confirmed, without it). Slower calls are not re-warmed (it would double their rounds' time); for them a
cold start is a small part of a call, and the round design below balances it."""
MIN_ROUNDS = 12
MAX_ROUNDS = 2000
BLOCK = 4
"""Rounds come in blocks of four, so which side goes second (after the other's burst) and which call that side
makes first (model or yardstick) take each of their four combinations once: whatever the switch costs the call
after it lands on head's and base's model and yardstick alike and cancels in the estimate."""


def round_plan(round_index: int) -> tuple[tuple[str, str], bool]:
    """Return (the order of the sides, whether each side calls the model first) of a round."""
    order = ("base", "head") if round_index % 2 == 0 else ("head", "base")
    return order, (round_index // 2) % 2 == 0
WARM_CALLS = 3
EXACT_METRICS = ("size_bytes", "compressed_size_bytes", "macs", "peak_memory_bytes")
"""The deterministic metrics ab compares (lower is better), with the baseline tolerances of thresholds.json."""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: its name, the ref the user gave, the commit (None: the working tree), the folder
    its worker runs in (the project folder inside its checkout)."""

    name: str
    ref: str
    commit: str | None
    label: str
    folder: Path

    def to_dict(self) -> dict[str, Any]:
        """Return the side for the results JSON."""
        return {"ref": self.ref, "commit": self.commit, "label": self.label}


@dataclass(frozen=True)
class Settings:
    """What both sides run: the model spec and data, the variants and batch sizes, the device, the timing budget."""

    model: str
    data: str
    weights: str | None
    variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    device: str
    threads: int
    budget_s: float
    thresholds: Thresholds
    seed: int = 0
    eval_count: int | None = None
    options: Mapping[str, int | float] = field(default_factory=dict)
    unjudged: str = "fail"
    """What a case whose latency could not be judged (a busy machine) does to the run: "fail" or "warn"."""

    def open_request(self) -> dict[str, Any]:
        """Return the `open` request both workers get."""
        return {
            "model": self.model, "data": self.data, "weights": self.weights, "device": self.device,
            "threads": self.threads, "seed": self.seed, "eval_count": self.eval_count, "options": dict(self.options),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the settings for the results JSON."""
        return {
            "model": self.model, "data": self.data, "weights": self.weights, "variants": list(self.variants),
            "batch_sizes": list(self.batch_sizes), "device": self.device, "threads": self.threads,
            "budget_s": self.budget_s, "seed": self.seed, "eval_count": self.eval_count, "options": dict(self.options),
            "thresholds": str(self.thresholds.path), "unjudged": self.unjudged,
        }

    @property
    def busy(self) -> BusyRule:
        """Return when the rounds count as disturbed and how long to wait for a quiet machine (thresholds timing)."""
        timing = self.thresholds.timing
        return BusyRule(timing.busy_limit, timing.busy_wait_s, timing.busy_retries)

    @property
    def rule(self) -> TimingRule:
        """Return the latency rule (thresholds "ab" and "timing")."""
        ab, timing = self.thresholds.ab, self.thresholds.timing
        return TimingRule(
            tolerance=ab.tolerance, process_sd=ab.process_sd[device_kind(self.device)], dof=ab.process_dof,
            screen_alpha=timing.screen_alpha,
        )


@dataclass
class CaseOutcome:
    """One case judged: what each side built, the latency and accuracy changes, the exact metrics, the verdict."""

    variant: str
    device: str
    batch_size: int
    base: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    status: str = "ok"
    reason: str = ""
    latency: LatencyChange | None = None
    latency_again: LatencyChange | None = None
    latency_verdict: str = SAME
    unjudged_reason: str = ""
    holm_alpha: float | None = None
    accuracy: AccuracyChange | None = None
    exact: dict[str, str] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """Return the case's id, as the gate names it."""
        return case_id(self.variant, self.device, self.batch_size)

    @property
    def regressions(self) -> list[str]:
        """Return the metrics on which head is worse (a case head cannot build that base could is one too)."""
        found = ["latency"] if self.latency_verdict == REGRESSION else []
        found += ["top1"] if self.accuracy is not None and self.accuracy.verdict == REGRESSION else []
        found += [m for m, v in self.exact.items() if v == REGRESSION]
        return found + (["builds"] if self.status == "head error" else [])

    @property
    def improvements(self) -> list[str]:
        """Return the metrics on which head is better."""
        found = ["latency"] if self.latency_verdict == IMPROVEMENT else []
        found += ["top1"] if self.accuracy is not None and self.accuracy.verdict == IMPROVEMENT else []
        return found + [m for m, v in self.exact.items() if v == IMPROVEMENT]

    @property
    def verdict(self) -> str:
        """Return "regression", "unjudged", "improvement", "flagged, not confirmed", "same" or the status of a case
        not run."""
        if self.regressions:
            return REGRESSION
        if self.status != "ok":
            return self.status
        if self.latency_verdict == UNJUDGED:
            return UNJUDGED
        if self.improvements:
            return IMPROVEMENT
        return FLAGGED if self.latency_verdict == FLAGGED else SAME

    def to_dict(self) -> dict[str, Any]:
        """Return the case for the results JSON (each side's per-image correctness is left out: the accuracy
        change carries what it showed)."""
        def side(answer: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if answer is None else {k: v for k, v in answer.items() if k != "correct"}

        return {
            "case_id": self.case_id, "variant": self.variant, "device": self.device, "batch_size": self.batch_size,
            "status": self.status, "reason": self.reason, "verdict": self.verdict,
            "regressions": self.regressions, "improvements": self.improvements,
            "base": side(self.base), "head": side(self.head),
            "latency": None if self.latency is None else self.latency.to_dict(),
            "latency_again": None if self.latency_again is None else self.latency_again.to_dict(),
            "latency_verdict": self.latency_verdict, "unjudged_reason": self.unjudged_reason,
            "holm_alpha": self.holm_alpha,
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "exact": dict(self.exact),
        }


@dataclass
class Comparison:
    """The whole job: both sides, the settings, every case, and how long it took."""

    base: Side
    head: Side
    settings: Settings
    cases: list[CaseOutcome]
    environment: dict[str, Any]
    models: dict[str, str]
    seconds: float = 0.0

    @property
    def regressions(self) -> list[CaseOutcome]:
        """Return the cases with a confirmed regression."""
        return [c for c in self.cases if c.regressions]

    @property
    def unjudged(self) -> list[CaseOutcome]:
        """Return the cases whose latency could not be judged (a machine busy through every wait)."""
        return [c for c in self.cases if c.verdict == UNJUDGED]

    @property
    def failed(self) -> bool:
        """Return True when the run fails: a confirmed regression, or an unjudged case under --unjudged fail."""
        return bool(self.regressions) or (bool(self.unjudged) and self.settings.unjudged == "fail")


Report = Callable[[str], None]


class Pair:
    """The two workers of one measurement, base's and head's, opened on the same settings."""

    def __init__(self, base: Side, head: Side, settings: Settings, report: Report) -> None:
        self.sides = {"base": base, "head": head}
        self.settings = settings
        self.report = report
        self.workers: dict[str, SideWorker] = {}
        self.opened: dict[str, dict[str, Any]] = {}
        self._yardsticks: dict[tuple[str, int], tuple[int, int]] = {}

    def start(self) -> None:
        """Start both workers and open them (in parallel: each may train its model first)."""
        for name, side in self.sides.items():
            self.workers[name] = SideWorker(name, side.folder)
        request = self.settings.open_request()
        for worker in self.workers.values():
            worker.send("open", **request)
        for name, worker in self.workers.items():
            self.opened[name] = worker.receive("open")
        base_ids = self.opened["base"]["identity"]["eval_ids_sha256"]
        head_ids = self.opened["head"]["identity"]["eval_ids_sha256"]
        if base_ids != head_ids:
            raise HarnessError(
                f"base and head evaluate different images (eval ids {base_ids} and {head_ids}): the data spec "
                f"{self.settings.data!r} must read the same images in both checkouts (an absolute data path does)"
            )

    def both(self, op: str, **fields: Any) -> dict[str, dict[str, Any]]:
        """Send the same request to each worker in turn, the second only once the first has answered, and return
        both answers: building (compiling, autotuning), warming and measuring memory must not share the machine
        with the other side's, or the two would choose kernels and time warm-ups under each other's load."""
        return {name: worker.ask(op, **fields) for name, worker in self.workers.items()}

    def stop(self, *, kill: bool = False) -> None:
        """End both workers."""
        for worker in self.workers.values():
            worker.kill() if kill else worker.stop()
        self.workers.clear()

    def time_case(self, variant: str, batch_size: int, budget_s: float) -> LatencyChange:
        """Time one case on both sides in interleaved rounds (rounds); when others held the workers back beyond the
        busy limit meanwhile, wait for a quiet machine and time it again, as the gate does (Settings.busy)."""
        busy = self.settings.busy
        change = self.rounds(variant, batch_size, budget_s)
        waits: list[str] = []
        for _ in range(busy.retries):
            if change.contention is None or change.contention <= busy.limit:
                break
            wait = wait_until_quiet(busy.limit, max_wait_s=busy.wait_s)
            waits.append(f"others held the workers back {change.contention:.0%} of the time; waited "
                         f"{wait.waited_s:.0f} s ({'quiet' if wait.quiet else 'still busy'}) and timed it again")
            self.report(f"  {waits[-1]}")
            change = self.rounds(variant, batch_size, budget_s)
        return replace(change, waits=tuple(waits))

    def rounds(self, variant: str, batch_size: int, budget_s: float) -> LatencyChange:
        """Time one case on both sides in interleaved rounds until the change is known to the target precision
        (thresholds "ab".target_se: its log standard error, checked every other block), MIN_ROUNDS at least and
        `budget_s` seconds at most, against a yardstick matched to the model's cost (matched_yardstick)."""
        size, calls = self.yardstick_for(variant, batch_size)
        warmed = self.both("warm", variant=variant, batch_size=batch_size, calls=WARM_CALLS,
                           yardstick_size=size, yardstick_calls=calls)
        per_pair = max(answer["seconds"] for answer in warmed.values()) / (WARM_CALLS + 1)
        pairs = max(1, math.ceil(BURST_S / per_pair)) if per_pair > 0 else 1
        rewarm = per_pair < REWARM_LIMIT_S
        bursts: dict[str, list[Burst]] = {"base": [], "head": []}
        target = self.settings.thresholds.ab.target_se
        start = time.perf_counter()
        rounds = 0
        with Contention() as window:
            while rounds < MAX_ROUNDS:
                order, model_first = round_plan(rounds)
                for name in order:
                    answer = self.workers[name].ask(
                        "time", variant=variant, batch_size=batch_size, pairs=pairs, model_first=model_first,
                        rewarm=rewarm, yardstick_size=size, yardstick_calls=calls,
                    )
                    bursts[name].append(Burst(tuple(answer["model_ms"]), tuple(answer["yardstick_ms"])))
                rounds += 1
                if rounds < MIN_ROUNDS or rounds % BLOCK:
                    continue
                if time.perf_counter() - start >= budget_s:
                    break
                if rounds % (2 * BLOCK) == 0 and latency_change(bursts["base"], bursts["head"]).log_se <= target:
                    break
        change = latency_change(bursts["base"], bursts["head"])
        return replace(change, contention=window.share, yardstick=f"ResNet18 at {size}x{size} px, {calls} call(s)")

    def yardstick_for(self, variant: str, batch_size: int) -> tuple[int, int]:
        """Return the yardstick (image size, calls) whose cost matches the case's model on base's worker, chosen once
        per case: a warm-up at full size, then one at the size the first suggests (cost is not exactly in
        proportion to the pixels)."""
        if (variant, batch_size) not in self._yardsticks:
            first = self.workers["base"].ask("warm", variant=variant, batch_size=batch_size, calls=WARM_CALLS)
            size, calls = matched_yardstick(first["model_ms"], first["yardstick_ms"])
            if size < FULL_SIZE:
                again = self.workers["base"].ask("warm", variant=variant, batch_size=batch_size, calls=WARM_CALLS,
                                                 yardstick_size=size)
                scale = math.sqrt(first["model_ms"] / max(again["yardstick_ms"], 1e-6))
                size = _size(size * scale)
            self._yardsticks[(variant, batch_size)] = (size, calls)
        return self._yardsticks[(variant, batch_size)]


FULL_SIZE = 224
MIN_SIZE = 32
MAX_YARDSTICK_CALLS = 8


def _size(pixels: float) -> int:
    return int(min(FULL_SIZE, max(MIN_SIZE, round(pixels / 8) * 8)))


def matched_yardstick(model_ms: float, yardstick_ms: float) -> tuple[int, int]:
    """Return (image size, calls per burst step) of a yardstick that costs about what the model does: a smaller image
    for a faster model (cost grows with the pixels), several calls for a slower one. A yardstick ten times the model's
    cost would bring ten times the model's jitter into a change it only normalizes."""
    if model_ms <= 0 or yardstick_ms <= 0:
        return FULL_SIZE, 1
    if model_ms >= yardstick_ms:
        return FULL_SIZE, max(1, min(MAX_YARDSTICK_CALLS, round(model_ms / yardstick_ms)))
    return _size(FULL_SIZE * math.sqrt(model_ms / yardstick_ms)), 1


@contextmanager
def pair_of(base: Side, head: Side, settings: Settings, report: Report) -> Iterator[Pair]:
    """Yield a started Pair; both workers end when the block ends (killed on an error or Ctrl-C)."""
    pair = Pair(base, head, settings, report)
    try:
        pair.start()
        yield pair
    except BaseException:
        pair.stop(kill=True)
        raise
    pair.stop()


def _build_all(pair: Pair, variants: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    built = {}
    for variant in variants:
        pair.report(f"building {variant} on both sides")
        built[variant] = pair.both("build", variant=variant)
    return built


def _outcome(settings: Settings, variant: str, batch_size: int, built: dict[str, dict[str, Any]]) -> CaseOutcome:
    outcome = CaseOutcome(variant, device_kind(settings.device), batch_size, built["base"], built["head"])
    base_reason = built["base"].get("skipped") or built["base"].get("error")
    head_reason = built["head"].get("skipped") or built["head"].get("error")
    if built["base"].get("skipped"):
        outcome.status, outcome.reason = "skipped", str(base_reason)
    elif built["head"].get("error") and not built["base"].get("error"):
        outcome.status, outcome.reason = "head error", f"head cannot build it (base can): {head_reason}"
    elif built["base"].get("error") or built["head"].get("error"):
        outcome.status = "error"
        outcome.reason = "; ".join(f"{side}: {r}" for side, r in (("base", base_reason), ("head", head_reason)) if r)
    return outcome


def _judge_static(settings: Settings, outcome: CaseOutcome) -> None:
    t = settings.thresholds
    assert outcome.base is not None and outcome.head is not None
    outcome.accuracy = accuracy_change(
        outcome.base["correct"], outcome.head["correct"],
        tolerance=t.tolerance("top1", outcome.device), alpha=t.accuracy_alpha,
    )
    for metric in EXACT_METRICS:
        outcome.exact[metric] = exact_change(
            outcome.base.get(metric), outcome.head.get(metric),
            tolerance=t.tolerance(metric, outcome.device), min_abs=t.min_change(metric),
        )


def compare(settings: Settings, base: Side, head: Side, report: Report) -> Comparison:
    """Measure and judge every case of `settings` on both sides; see the module's doc."""
    start = time.perf_counter()
    rule = settings.rule
    with pair_of(base, head, settings, report) as pair:
        report(f"base: {pair.opened['base']['model']} in {base.folder}")
        report(f"head: {pair.opened['head']['model']} in {head.folder}")
        built = _build_all(pair, settings.variants)
        cases = [_outcome(settings, v, b, built[v]) for v in settings.variants for b in settings.batch_sizes]
        gain_alpha = settings.thresholds.timing.family_alpha / max(1, sum(c.status == "ok" for c in cases))
        for outcome in cases:
            if outcome.status != "ok":
                continue
            report(f"timing {outcome.case_id}: base and head in interleaved rounds")
            outcome.latency = pair.time_case(outcome.variant, outcome.batch_size, settings.budget_s)
            memory = pair.both("memory", variant=outcome.variant, batch_size=outcome.batch_size)
            assert outcome.base is not None and outcome.head is not None
            outcome.base["peak_memory_bytes"] = memory["base"]["peak_memory_bytes"]
            outcome.head["peak_memory_bytes"] = memory["head"]["peak_memory_bytes"]
            _judge_static(settings, outcome)
            busy = _busy(settings, outcome.latency)
            if busy:
                outcome.latency_verdict, outcome.unjudged_reason = UNJUDGED, busy
            elif rule.flags(outcome.latency):
                outcome.latency_verdict = FLAGGED
            elif rule.faster(outcome.latency, gain_alpha):
                outcome.latency_verdict = IMPROVEMENT
        environment = pair.opened["head"]["environment"]
        models = {name: opened["model"] for name, opened in pair.opened.items()}
    flagged = [c for c in cases if c.latency_verdict == FLAGGED]
    if flagged:
        _confirm(settings, base, head, flagged, timed=sum(c.latency is not None for c in cases), report=report)
    return Comparison(base, head, settings, cases, environment, models, seconds=time.perf_counter() - start)


def _busy(settings: Settings, change: LatencyChange) -> str:
    """Return why `change` cannot be judged because the machine was busy through every wait, or ""."""
    limit = settings.busy.limit
    if change.contention is None or change.contention <= limit:
        return ""
    waited = f" ({'; '.join(change.waits)})" if change.waits else ""
    return (f"the machine was busy: others held the workers back {change.contention:.0%} of the time the rounds ran "
            f"(limit {limit:.0%}){waited}; run ab on a quiet machine")


def _confirm(
    settings: Settings, base: Side, head: Side, flagged: list[CaseOutcome], *, timed: int, report: Report
) -> None:
    """Time the flagged cases again in two fresh workers and judge each pair of measurements: a case fails when its
    pooled test is rejected by Holm's step-down over the `timed` checks (unflagged ones count as p = 1) and the
    re-measurement confirms it (TimingRule.confirms). A re-measurement on a busy machine leaves it unjudged."""
    report(f"{len(flagged)} case(s) flagged slower: timing them again in two fresh workers")
    with pair_of(base, head, settings, report) as pair:
        _build_all(pair, sorted({c.variant for c in flagged}))
        for outcome in flagged:
            report(f"timing {outcome.case_id} again")
            outcome.latency_again = pair.time_case(outcome.variant, outcome.batch_size, settings.budget_s)
    judge_flagged(settings, flagged, timed=timed)


def judge_flagged(settings: Settings, flagged: list[CaseOutcome], *, timed: int) -> None:
    """Judge each flagged case on its two measurements: a regression only when Holm's step-down over the `timed`
    checks rejects its pooled test (the smallest p-values first; unflagged checks count as p = 1) and the second
    measurement confirms it (TimingRule.confirms); a second measurement on a busy machine leaves it unjudged."""
    rule = settings.rule
    family = HolmFamily(timed, settings.thresholds.timing.family_alpha)
    pooled = {c.case_id: rule.pooled(c.latency, c.latency_again) for c in flagged if c.latency and c.latency_again}
    for outcome in sorted(flagged, key=lambda c: pooled[c.case_id].p_worse):
        assert outcome.latency is not None and outcome.latency_again is not None
        busy = _busy(settings, outcome.latency_again)
        if busy:
            outcome.latency_verdict, outcome.unjudged_reason = UNJUDGED, f"flagged; re-measuring it: {busy}"
            continue
        rejected, threshold = family.judge(outcome.case_id, pooled[outcome.case_id].p_worse)
        outcome.holm_alpha = threshold
        if rejected and rule.confirms(outcome.latency, outcome.latency_again, threshold):
            outcome.latency_verdict = REGRESSION
