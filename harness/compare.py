"""Two results files side by side: per case and metric the change, its significance and a verdict."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.baselines import METRICS, Metric, Thresholds, case_spread, judge_metric, load_thresholds
from harness.errors import ResultsError
from harness.results import CaseResult, RunRecord, load_run
from harness.stats import RatioEstimate, relative_change_interval

MB = 1e6
_HEADINGS = {
    "top1": "top-1",
    "latency_median_ms": "latency ms",
    "throughput_ips": "img/s",
    "speedup_vs_fp32": "speedup",
    "size_bytes": "size MB",
    "compressed_size_bytes": "gzip MB",
    "peak_memory_bytes": "peak MB",
}


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one case in both runs; verdict is "regression", "improvement", "same" or "n/a"."""

    metric: str
    old: float | None
    new: float | None
    delta: float | None
    relative: float | None
    significant: bool | None
    verdict: str
    detail: str


@dataclass(frozen=True)
class CaseDelta:
    """One case id across the two runs.

    presence: "both", "old only" or "new only"; note: why it was not compared, or a status change.
    """

    case_id: str
    presence: str
    metrics: tuple[MetricDelta, ...]
    note: str = ""
    status_regression: bool = False

    @property
    def verdict(self) -> str:
        """Return "regression", "improvement", "same", "old only", "new only" or "not compared"."""
        if self.presence != "both":
            return self.presence
        verdicts = {m.verdict for m in self.metrics}
        if self.status_regression or "regression" in verdicts:
            return "regression"
        if "improvement" in verdicts:
            return "improvement"
        return "same" if self.metrics else "not compared"

    def findings(self, kind: str) -> list[str]:
        """Return one line per metric (or status change) of this case with verdict `kind`."""
        lines = [f"{self.case_id} {m.metric}: {m.detail}" for m in self.metrics if m.verdict == kind]
        if kind == "regression" and self.status_regression:
            lines.insert(0, f"{self.case_id}: {self.note}")
        return lines


def _samples(case: CaseResult) -> list[float] | None:
    samples = case.extra.get("latency_samples_ms")
    if isinstance(samples, list) and samples and all(isinstance(s, int | float) and s > 0 for s in samples):
        return [float(s) for s in samples]
    return None


def _fmt(m: Metric, value: float | None) -> str:
    if value is None:
        return "-"
    if m.name == "top1":
        return f"{value * 100:.2f}%"
    if m.name.endswith("_bytes"):
        return f"{value / MB:.2f}"
    if m.name == "speedup_vs_fp32":
        return f"{value:.2f}x"
    return f"{value:.2f}" if m.name == "latency_median_ms" else f"{value:.1f}"


def _change(m: Metric, delta: float | None, relative: float | None) -> str:
    if delta is None:
        return ""
    if m.name == "top1":
        return f"{delta * 100:+.2f}pt"
    return f"{relative:+.1%}" if relative is not None else f"{delta:+.3g}"


def _latency_interval(old: CaseResult, new: CaseResult) -> RatioEstimate | None:
    old_s, new_s = _samples(old), _samples(new)
    return relative_change_interval(old_s, new_s) if old_s and new_s else None


def _metric_delta(
    m: Metric, old: CaseResult, new: CaseResult, thresholds: Thresholds, interval: RatioEstimate | None
) -> MetricDelta:
    a, b = m.read(old), m.read(new)
    if a is None or b is None:
        return MetricDelta(m.name, a, b, None, None, None, "n/a", "not measured in both runs")
    judged = judge_metric(m, a, b, thresholds, new.device, old_spread=case_spread(m, old),
                          new_spread=case_spread(m, new), old_correct=old.correct, new_correct=new.correct)
    significant: bool | None = None if judged.paired is None else judged.verdict != "same"
    how = judged.detail
    if m.spread == "latency" and interval is not None:
        # Throughput is batch / median latency: the latency interval's significance holds for both.
        significant = interval.low > 1.0 or interval.high < 1.0
        bounds = f"[{interval.low:.3f}, {interval.high:.3f}]"
        how += f"; latency ratio new/old {interval.ratio:.3f} (95% interval {bounds})"
        if not significant and judged.verdict != "same":
            judged = replace(judged, verdict="same")
            how += ", not significant"
    return MetricDelta(m.name, a, b, b - a, judged.relative, significant, judged.verdict,
                       f"{_fmt(m, a)} -> {_fmt(m, b)}; {how}")


def _case_delta(old: CaseResult, new: CaseResult, thresholds: Thresholds) -> CaseDelta:
    cid = new.case_id
    if old.status != "ok" or new.status != "ok":
        if old.status == "ok":
            return CaseDelta(
                cid,
                "both",
                (),
                f"measured before, now {new.status}: {new.reason or 'no reason'}",
                status_regression=True,
            )
        return CaseDelta(cid, "both", (), f"not compared: {old.status} before, {new.status} now")
    interval = _latency_interval(old, new)
    return CaseDelta(cid, "both", tuple(_metric_delta(m, old, new, thresholds, interval) for m in METRICS))


def compare_runs(old: RunRecord, new: RunRecord, thresholds: Thresholds) -> list[CaseDelta]:
    """Return one CaseDelta per case id in either run: old's order, then the cases only in new."""
    new_cases = {c.case_id: c for c in new.cases}
    old_ids = {c.case_id for c in old.cases}
    deltas = []
    for case in old.cases:
        other = new_cases.get(case.case_id)
        deltas.append(
            _case_delta(case, other, thresholds)
            if other is not None
            else CaseDelta(case.case_id, "old only", (), "not in the new run")
        )
    deltas.extend(
        CaseDelta(c.case_id, "new only", (), "not in the old run")
        for c in new.cases
        if c.case_id not in old_ids
    )
    return deltas


def count(deltas: Sequence[CaseDelta], kind: str) -> int:
    """Return how many findings (metric changes and status changes) of `kind` the deltas hold."""
    return sum(len(d.findings(kind)) for d in deltas)


def summary_line(deltas: Sequence[CaseDelta]) -> str:
    """Return "N regressions, M improvements" with how many cases were compared."""
    regressions, improvements = count(deltas, "regression"), count(deltas, "improvement")
    both = sum(d.presence == "both" for d in deltas)
    only = [f"{sum(d.presence == p for d in deltas)} {p}" for p in ("old only", "new only")]
    return (
        f"{regressions} regression{'s' * (regressions != 1)}, {improvements} improvement"
        f"{'s' * (improvements != 1)} in {both} cases in both runs ({', '.join(only)})"
    )


def _rows(deltas: Sequence[CaseDelta], marks: dict[str, str]) -> list[list[str]]:
    rows = []
    for d in deltas:
        cells = {x.metric: x for x in d.metrics}
        row = [d.case_id, d.verdict]
        for m in METRICS:
            x = cells.get(m.name)
            if x is None or x.verdict == "n/a":
                row.append("-" if x is not None or d.metrics else "")
                continue
            change = _change(m, x.delta, x.relative)
            row.append(f"{_fmt(m, x.new)}" + (f" ({change})" if change else "") + marks.get(x.verdict, ""))
        rows.append(row)
    return rows


def _sections(deltas: Sequence[CaseDelta]) -> list[tuple[str, list[str]]]:
    """Return (title, lines) for the regressions, improvements and cases not compared, if any."""
    sections = [
        ("Regressions", [line for d in deltas for line in d.findings("regression")]),
        ("Improvements", [line for d in deltas for line in d.findings("improvement")]),
        ("Not compared", [f"{d.case_id}: {d.note}" for d in deltas if d.note and not d.status_regression]),
    ]
    return [(title, lines) for title, lines in sections if lines]


def format_text(deltas: Sequence[CaseDelta]) -> str:
    """Return the comparison as an aligned text table ('!' regression, '^' improvement) and the findings."""
    header = ["case", "verdict", *(_HEADINGS[m.name] for m in METRICS)]
    rows = _rows(deltas, {"regression": " !", "improvement": " ^"})
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, ["-" * w for w in widths], *rows]
    ]
    lines += ["", summary_line(deltas)]
    for title, found in _sections(deltas):
        lines += [f"{title}:", *(f"  {line}" for line in found)]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(
    deltas: Sequence[CaseDelta], old_path: Path, new_path: Path, *, warning: str | None = None
) -> str:
    """Return the comparison for a PR comment: heading, summary line, table, then each finding."""
    lines = ["## Benchmark comparison", "", f"`{old_path}` → `{new_path}`", ""]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    lines += [f"**{summary_line(deltas)}**", ""]
    header = ["case", "verdict", *(_HEADINGS[m.name] for m in METRICS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _rows(deltas, {"regression": " 🔴", "improvement": " 🟢"}):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    for title, found in _sections(deltas):
        lines += ["", f"### {title}", *(f"- {line}" for line in found)]
    return "\n".join(lines) + "\n"


def environment_warning(old: RunRecord, new: RunRecord) -> str | None:
    """Return a warning when the runs differ in environment, data or model, else None."""
    problems = []
    if old.env_key != new.env_key:
        problems.append(
            f"the hardware/versions differ (env_key {old.env_key} vs {new.env_key}), so timing changes "
            "may not be the code's"
        )
    if (old.data, old.model) != (new.data, new.model):
        problems.append(
            f"the data/model differ ({old.data}, {old.model} vs {new.data}, {new.model}), so accuracy "
            "changes are not comparable"
        )
    return "; ".join(problems) or None


def compare_command(old: Path, new: Path, *, markdown: Path | None, thresholds: Path | None) -> int:
    """Print the comparison of two results files and write it as markdown if asked; return 1 on a regression.

    Returns 0 when no metric regressed beyond its threshold and no case measured before fails now; cases in
    only one run are listed, never fatal. Unreadable results or thresholds files raise ResultsError (the CLI
    exits 2 with its message).
    """
    old_run, new_run = load_run(old), load_run(new)
    deltas = compare_runs(old_run, new_run, load_thresholds(thresholds))
    warning = environment_warning(old_run, new_run)
    if warning:
        print(f"warning: {warning}")
    print(format_text(deltas))
    if markdown is not None:
        try:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(format_markdown(deltas, old, new, warning=warning), encoding="utf-8")
        except OSError as exc:
            raise ResultsError(
                f"cannot write {markdown}: {exc}; check the folder exists and is writable"
            ) from exc
        print(f"wrote {markdown}", file=sys.stderr)
    return 1 if count(deltas, "regression") else 0
