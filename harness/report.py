"""A run's report: the article-shaped table, the article's claims beside ours, the accuracy-latency plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harness.errors import HarnessError
from harness.jsonio import write_atomic
from harness.results import CaseResult, RunRecord, load_run
from harness.table import markdown_table, notes_lines

MB = 1e6


@dataclass(frozen=True)
class Claim:
    """One row of the article's results table, as the article states it (not measured by us)."""

    method: str
    variant: str
    top1_change: float | None
    size_mb: float
    latency_ms: float


# The article's table (SEED.md): GPU and batch size not named. Shown as claims, next to our measurements.
ARTICLE_CLAIMS: tuple[Claim, ...] = (
    Claim("original", "fp32", None, 44.6, 15.2),
    Claim("dynamic int8 quantization", "dynamic_int8", -0.012, 11.3, 8.7),
    Claim("distillation", "distill", 0.025, 44.6, 15.2),
    Claim("30% unstructured pruning", "prune_unstructured", -0.008, 31.2, 10.5),
)
CLAIMS_LABEL = "claimed by the article (not measured)"


class PlotPoint(NamedTuple):
    """One case on the accuracy-latency plane."""

    latency_ms: float
    top1: float
    label: str = ""
    size_mb: float = 0.0


def dominates(a: PlotPoint, b: PlotPoint) -> bool:
    """Return True when `a` is at least as fast and as accurate as `b`, and strictly better in one."""
    return (
        a.latency_ms <= b.latency_ms and a.top1 >= b.top1 and (a.latency_ms < b.latency_ms or a.top1 > b.top1)
    )


def pareto_front(points: Sequence[PlotPoint]) -> list[PlotPoint]:
    """Return the points no other point dominates, by rising latency (then falling accuracy).

    Along the returned front accuracy rises with latency: each point is the lowest latency for its accuracy.
    Equal points are all kept. Values must be finite (NaN compares false and would never be dominated).
    """
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.latency_ms, -p.top1))


def _ok(case: CaseResult) -> bool:
    return case.status == "ok" and case.top1 is not None and "median" in case.latency_ms


def plot_points(cases: Sequence[CaseResult], batch_size: int) -> list[PlotPoint]:
    """Return the measured cases at `batch_size` as plot points (median latency, top-1, variant, size MB)."""
    return [
        PlotPoint(c.latency_ms["median"], float(c.top1 or 0.0), c.variant, (c.size_bytes or 0) / MB)
        for c in cases
        if c.batch_size == batch_size and _ok(c) and math.isfinite(c.latency_ms["median"])
    ]


def choose_batch_size(record: RunRecord, batch_size: int | None) -> int | None:
    """Return `batch_size` if a case measured it, else the largest measured one (None if none was)."""
    measured = sorted({c.batch_size for c in record.cases if _ok(c)})
    if batch_size is None:
        return measured[-1] if measured else None
    if batch_size not in measured:
        choices = ", ".join(map(str, measured)) or "none (no case was measured)"
        raise HarnessError(
            f"--batch-size {batch_size} has no measured case in this run; choose from {choices}"
        )
    return batch_size


def save_plot(points: Sequence[PlotPoint], path: Path, *, title: str) -> None:
    """Write a PNG scatter of top-1 against latency (log x), marker area by size, with the Pareto front."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and never touches pyplot's state
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    if points:
        ax.scatter(
            [p.latency_ms for p in points],
            [p.top1 * 100 for p in points],
            s=[12 * p.size_mb if p.size_mb > 0 else 15 for p in points],  # area ∝ MB; unknown size: small
            alpha=0.55,
            edgecolors="black",
            linewidths=0.6,
        )
        for i, p in enumerate(sorted(points, key=lambda q: q.latency_ms)):
            offset = (6, 4) if i % 2 == 0 else (6, -11)  # alternate sides so that neighbours overlap less
            ax.annotate(
                p.label, (p.latency_ms, p.top1 * 100), textcoords="offset points", xytext=offset, fontsize=8
            )
        front = pareto_front(points)
        ax.step(
            [p.latency_ms for p in front],
            [p.top1 * 100 for p in front],
            where="post",
            color="tab:red",
            linewidth=1.2,
            label="Pareto front (lowest latency for its accuracy)",
        )
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.legend(loc="lower right", fontsize=8, title="marker area ∝ size (MB)", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measured cases", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency, median (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def _environment_lines(record: RunRecord) -> list[str]:
    env = record.environment
    device = env.get("gpu_name") or env.get("cpu_model") or "unknown"
    commit = env.get("git_commit")
    commit_text = f"{str(commit)[:12]}{' (dirty)' if env.get('git_dirty') else ''}" if commit else "unknown"
    return [
        f"- environment: `{record.env_key}` ({device}; torch {env.get('torch')}, "
        f"{env.get('torch_threads', '?')} threads, CUDA {env.get('cuda_version') or 'none'})",
        f"- data: {record.data}; model: {record.model}",
        f"- created: {record.created}; git: {commit_text}",
        f"- command: `{record.command}`",
    ]


def _claims_table(record: RunRecord, batch_size: int | None) -> list[str]:
    """Return the article's claims, each beside what we measured for the matching variant at `batch_size`."""
    ours = {c.variant: c for c in record.cases if c.batch_size == batch_size and c.status == "ok"}
    lines = [
        "| method | Δ top-1 (claimed) | size MB (claimed) | latency ms (claimed) "
        f"| our variant | Δ top-1 (measured) | size MB (measured) | latency ms (measured, bs {batch_size}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for claim in ARTICLE_CLAIMS:
        case = ours.get(claim.variant)
        claimed_change = "baseline" if claim.top1_change is None else f"{claim.top1_change * 100:+.1f}%"
        if case is None:
            measured = ["not measured"] * 3
        else:
            measured = [
                "ref"
                if claim.variant == "fp32"
                else (f"{case.top1_change * 100:+.2f}%" if case.top1_change is not None else "-"),
                f"{case.size_bytes / MB:.1f}" if case.size_bytes is not None else "-",
                f"{case.latency_ms['median']:.2f}" if "median" in case.latency_ms else "-",
            ]
        lines.append(
            f"| {claim.method} | {claimed_change} | {claim.size_mb:.1f} | {claim.latency_ms:.1f} "
            f"| {claim.variant} | " + " | ".join(measured) + " |"
        )
    return lines


def report_markdown(record: RunRecord, *, stem: str, batch_size: int | None, png_name: str) -> str:
    """Return the report: environment, measured table, notes, plot, and the article's claims beside ours."""
    points = plot_points(record.cases, batch_size) if batch_size is not None else []
    front = " → ".join(f"{p.label} ({p.latency_ms:.2f} ms, {p.top1:.2%})" for p in pareto_front(points))
    lines = [f"# Benchmark report: {stem}", "", *_environment_lines(record), "", "## Measured", ""]
    lines += [markdown_table(record.cases), ""]
    notes = notes_lines(record)
    if notes:
        lines += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    lines += [
        f"## Accuracy against latency (batch {batch_size if batch_size is not None else '-'})",
        "",
        f"![top-1 against latency]({png_name})",
        "",
        f"Pareto front: {front or 'none (no measured cases)'}",
        "",
        f"## The article's table beside ours: 'claimed' columns are {CLAIMS_LABEL}",
        "",
        "The article names neither its GPU nor its batch size; its figures are hypotheses, ours are measured "
        "on the environment above.",
        "",
        *_claims_table(record, batch_size),
    ]
    return "\n".join(lines) + "\n"


def report_command(results: Path, *, out_dir: Path | None, batch_size: int | None) -> int:
    """Write `<stem>.md` and `<stem>.png` of a results file (beside it unless `out_dir`); print; return 0."""
    results = Path(results)
    record = load_run(results)
    chosen = choose_batch_size(record, batch_size)
    out = Path(out_dir) if out_dir is not None else results.parent
    md_path, png_path = out / f"{results.stem}.md", out / f"{results.stem}.png"
    title = f"{record.model} on {record.env_key}, batch {chosen if chosen is not None else '-'}"
    save_plot(plot_points(record.cases, chosen) if chosen is not None else [], png_path, title=title)
    text = report_markdown(record, stem=results.stem, batch_size=chosen, png_name=png_path.name)
    write_atomic(md_path, lambda handle: handle.write(text.encode("utf-8")))
    print(md_path)
    print(png_path)
    return 0
