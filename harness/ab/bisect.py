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


def evidence(outcome: CaseOutcome, metric: str) -> str:
    """Return what the measurement of `metric` showed, in one phrase."""
    if outcome.status not in ("ok", "head error"):
        return f"{outcome.status}: {outcome.reason}"
    if outcome.status == "head error":
        return outcome.reason
    if metric == "latency" and outcome.latency is not None:
        c = outcome.latency
        text = f"latency {c.change:+.1%} (95% {c.low - 1:+.1%} to {c.high - 1:+.1%}, {c.rounds} rounds)"
        if outcome.latency_again is not None:
            a = outcome.latency_again
            text += f", again {a.change:+.1%} ({a.low - 1:+.1%} to {a.high - 1:+.1%})"
        return f"{text}: {outcome.latency_verdict}"
    if metric == "top1" and outcome.accuracy is not None:
        acc = outcome.accuracy
        return f"top-1 {acc.base:.2%} -> {acc.head:.2%} ({acc.change * 100:+.1f} pts): {acc.verdict}"
    base = (outcome.base or {}).get(metric)
    head = (outcome.head or {}).get(metric)
    return f"{metric} {base} -> {head}: {outcome.exact.get(metric, 'same')}"


def is_bad(outcome: CaseOutcome, metric: str) -> bool:
    """Return True when the case regressed on `metric` (a case head cannot build is bad on every metric)."""
    return metric in outcome.regressions or "builds" in outcome.regressions


def bisect(
    repo: Repository,
    good: str,
    bad: str,
    settings: Settings,
    metric: str,
    report: Callable[[str], None],
) -> tuple[Step | None, list[Step]]:
    """Return (the first bad step, every step measured); None when BAD does not regress against GOOD."""
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

        def measure(commit: str) -> Step:
            label = repo.describe(commit)
            report(f"bisect: measuring {label} against {base.label}")
            try:
                with repo.checked_out(commit) as folder:
                    head = Side("head", commit, commit, label, folder)
                    comparison = compare(settings, base, head, report=lambda line: report(f"  {line}"))
            except WorkerError as err:
                if err.side != "head":
                    raise  # GOOD itself does not run: nothing to bisect against
                step = Step(commit, label, True, f"the model does not run here: {err}", {})
            else:
                outcome = comparison.cases[0]
                step = Step(commit, label, is_bad(outcome, metric), evidence(outcome, metric), outcome.to_dict())
            steps.append(step)
            report(f"bisect: {label}: {'BAD' if step.bad else 'good'}: {step.evidence}")
            return step

        last = measure(bad_commit)
        if not last.bad:
            return None, steps
        low, high = -1, len(commits) - 1  # commits[high] is bad; everything up to low is good
        first_bad = last
        while high - low > 1:
            middle = (low + high) // 2
            step = measure(commits[middle])
            if step.bad:
                high, first_bad = middle, step
            else:
                low = middle
        return first_bad, steps


def one_case(settings: Settings, variant: str, batch_size: int) -> Settings:
    """Return the settings narrowed to one case."""
    return replace(settings, variants=(variant,), batch_sizes=(batch_size,))
