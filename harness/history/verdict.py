"""What judging a series returns: its steps, the rules' findings, the level each run is judged against."""

from __future__ import annotations

from dataclasses import dataclass

from harness.history.series import Series


@dataclass(frozen=True)
class Step:
    """A change of level: between point `before` and point `after` (indices), by `change` (relative for ratios and
    sizes, points for top1) with its 95% interval; `worse` in the metric's bad direction; `new` while it counts;
    `confirmed` once enough runs follow it (before that, only the newest-run rule judges the jump)."""

    before: int
    after: int
    change: float
    low: float
    high: float
    worse: bool
    new: bool
    confirmed: bool = True


@dataclass(frozen=True)
class Finding:
    """One rule's word on a series: which rule ("newest", "step", "drift"), what it saw, and whether it fails."""

    rule: str
    message: str
    fails: bool


@dataclass(frozen=True)
class Verdict:
    """A series judged: its steps, the level each run is judged against (the baseline), the newest run's limit."""

    series: Series
    steps: tuple[Step, ...]
    levels: tuple[float, ...]
    limit: float | None
    window_start: int | None
    findings: tuple[Finding, ...]
    sigma: float | None = None

    @property
    def failed(self) -> bool:
        """Return True when any rule fails the series."""
        return any(f.fails for f in self.findings)

    @property
    def judged(self) -> bool:
        """Return True when the series had enough runs to be judged."""
        return self.window_start is not None


def worse_side(delta: float, higher_is_better: bool) -> float:
    """Return `delta` (new minus old) signed so that positive is worse."""
    return -delta if higher_is_better else delta


def pct(fraction: float) -> str:
    """Return a relative change as "+1.5%"."""
    return f"{fraction:+.1%}"


def step_message(series: Series, step: Step, unit: str) -> str:
    """Return what a step is: its size and 95% interval (relative, or points), its side, the runs around it."""
    before = series.points[step.before].run
    after = series.points[step.after].run
    if unit == "points":
        size = f"{step.change * 100:+.2f} points (95% interval {step.low * 100:+.2f} to {step.high * 100:+.2f})"
    else:
        size = f"{pct(step.change)} (95% interval {pct(step.low)} to {pct(step.high)})"
    word = "worse" if step.worse else "better"
    text = f"step of {size}, {word}, between {before.label} and {after.label} (first run after it)"
    return text if step.confirmed else f"{text}; not confirmed yet (too few runs after it)"
