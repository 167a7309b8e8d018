"""`python -m harness bisect GOOD BAD --case ID [--metric M]`: the first commit that regressed a case.

Each step runs `ab` (harness/ab/runner.py) with GOOD as base and the step's commit as head on the one case, and
calls the commit bad when the case regresses on the metric there (a latency slowdown is confirmed in fresh workers,
as `ab` confirms it). BAD is measured first: a regression that does not show between GOOD and BAD is not bisected.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from harness.ab.client import WorkerError
from harness.ab.git import Repository
from harness.ab.output import latency_text
from harness.ab.runner import CaseOutcome, Settings, Side, compare
from harness.errors import HarnessError

METRICS = ("latency", "top1", "size_bytes", "compressed_size_bytes", "macs", "peak_memory_bytes")
"""What bisect can chase: the metrics `ab` judges (latency is the yardstick-normalized one)."""


@dataclass(frozen=True)
class Step:
    """One measured commit: whether the case regressed there on the metric, and the evidence."""

    commit: str
    label: str
    bad: bool
    evidence: str
    outcome: dict[str, Any]


def evidence(outcome: CaseOutcome, metric: str, process_sd: float) -> str:
    """Return what the measurement of `metric` showed, in one phrase."""
    if outcome.status not in ("ok", "head error"):
        return f"{outcome.status}: {outcome.reason}"
    if outcome.status == "head error":
        return outcome.reason
    if metric == "latency" and outcome.latency is not None:
        rounds = outcome.latency.rounds
        return f"latency {latency_text(outcome, process_sd)} (95%, {rounds} rounds): {outcome.latency_verdict}"
    if metric == "top1" and outcome.accuracy is not None:
        acc = outcome.accuracy
        return f"top-1 {acc.base:.2%} -> {acc.head:.2%} ({acc.change * 100:+.1f} pts): {acc.verdict}"
    base = (outcome.base or {}).get(metric)
    head = (outcome.head or {}).get(metric)
    return f"{metric} {base} -> {head}: {outcome.exact.get(metric, 'same')}"


def is_bad(outcome: CaseOutcome, metric: str) -> bool:
    """Return True when the case regressed on `metric` (a case head cannot build is bad on every metric)."""
    return metric in outcome.regressions or "builds" in outcome.regressions


@dataclass(frozen=True)
class Bisection:
    """What bisect found: `verdict` "found" (first_bad, confirmed against its parent), "nothing" (BAD does not regress
    against GOOD) or "undecided" (`why`), and every step measured."""

    verdict: str
    steps: list[Step]
    first_bad: Step | None = None
    parent: Step | None = None
    why: str = ""


def bisect(
    repo: Repository,
    good: str,
    bad: str,
    settings: Settings,
    metric: str,
    report: Callable[[str], None],
) -> Bisection:
    """Bisect the first-parent commits between GOOD and BAD for the first that regressed the case on `metric`.

    Every step is an `ab` of GOOD against the step's commit, each timed to the same precision (ab's target) and a
    slowdown confirmed in fresh workers. The commit the search ends on is named only when it also regresses against
    its own parent, measured directly and confirmed; otherwise bisect says it cannot decide and why.
    """
    if metric not in METRICS:
        raise HarnessError(f"--metric {metric!r} is not one bisect can chase: choose one of {', '.join(METRICS)}")
    good_commit, bad_commit = repo.commit(good), repo.commit(bad)
    commits = repo.commits_between(good_commit, bad_commit)
    if not commits:
        raise HarnessError(f"{bad} is {good}: there is no commit between them to bisect")
    steps: list[Step] = []
    with ExitStack() as stack:
        base_folder = stack.enter_context(repo.checked_out(good_commit))
        base = Side("base", good, good_commit, repo.describe(good_commit), base_folder)

        def measure(commit: str, against: Side) -> Step:
            label = repo.describe(commit)
            report(f"bisect: measuring {label} against {against.label}")
            try:
                with repo.checked_out(commit) as folder:
                    head = Side("head", commit, commit, label, folder)
                    comparison = compare(settings, against, head, report=lambda line: report(f"  {line}"))
            except WorkerError as err:
                if err.side != "head":
                    raise  # the base itself does not run: nothing to measure against
                step = Step(commit, label, True, f"the model does not run here: {err}", {})
            else:
                outcome = comparison.cases[0]
                step = Step(commit, label, is_bad(outcome, metric), evidence(outcome, metric, settings.rule.process_sd),
                            outcome.to_dict())
            steps.append(step)
            report(f"bisect: {label} against {against.label}: {'BAD' if step.bad else 'good'}: {step.evidence}")
            return step

        last = measure(bad_commit, base)
        if not last.bad:
            return Bisection("nothing", steps)
        low, high = -1, len(commits) - 1  # commits[high] is bad; everything up to low is good
        first_bad = last
        while high - low > 1:
            middle = (low + high) // 2
            step = measure(commits[middle], base)
            if step.bad:
                high, first_bad = middle, step
            else:
                low = middle
        parent_commit = commits[high - 1] if high > 0 else good_commit
        if parent_commit == good_commit:
            parent = base
        else:
            parent_folder = stack.enter_context(repo.checked_out(parent_commit))
            parent = Side("base", parent_commit, parent_commit, repo.describe(parent_commit), parent_folder)
        direct = measure(first_bad.commit, parent)
        if not direct.bad:
            return Bisection("undecided", steps, first_bad=first_bad, why=(
                f"{first_bad.label} is worse than {base.label} but not, confirmed, than its parent {parent.label} "
                f"({direct.evidence}): the change may be spread over several commits, or smaller than one step of "
                "ab resolves; bisect with a larger --budget, or compare the commits around it with ab"
            ))
        return Bisection("found", steps, first_bad=direct)


def one_case(settings: Settings, variant: str, batch_size: int) -> Settings:
    """Return the settings narrowed to one case."""
    return replace(settings, variants=(variant,), batch_sizes=(batch_size,))
