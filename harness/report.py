"""A run's report: the article-shaped table, the article's claims beside ours, the accuracy-latency plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import HarnessError
from harness.jsonio import write_atomic
from harness.metrics import MB
from harness.results import CaseResult, RunRecord, get_metric, load_run
from harness.stats import drop_interval, paired_accuracy
from harness.table import markdown_table, notes_lines


@dataclass(frozen=True)
class Claim:
    """One row of the article's results table, as the article states it (not measured by us)."""

    method: str
    variant: str
    top1_change: float | None
    size_mb: float
    latency_ms: float


# The article's results table (the article this project grew from; it names neither its GPU nor its batch size).
# Shown as claims, next to our measurements.
ARTICLE_CLAIMS: tuple[Claim, ...] = (
    Claim("original", "fp32", None, 44.6, 15.2),
    Claim("dynamic int8 quantization", "dynamic_int8", -0.012, 11.3, 8.7),
    Claim("distillation", "distill", 0.025, 44.6, 15.2),
    Claim("30% unstructured pruning", "prune_unstructured", -0.008, 31.2, 10.5),
)
CLAIMS_LABEL = "claimed by the article (not measured)"


REFERENCE_LABEL = "fp32"
SIZE, LATENCY = get_metric("size_bytes"), get_metric("latency_ms")
ACCURACY_ALPHA = 0.05
"""One-sided level at which one point's accuracy counts as better than another's on the same images (McNemar)."""


class PlotPoint(NamedTuple):
    """One case on the accuracy-latency plane; `correct` is its per-image correctness, when the run kept it;
    `latency_low`/`latency_high` the 95% interval of its median latency (its own value when unknown)."""

    latency_ms: float
    top1: float
    label: str = ""
    size_mb: float = 0.0
    correct: tuple[bool, ...] | None = None
    latency_low: float | None = None
    latency_high: float | None = None


def median_interval(samples: Sequence[float], z: float = 1.959964) -> tuple[float, float]:
    """Return the distribution-free 95% interval of the median of `samples` (order statistics: the ranks a
    binomial(n, 1/2) count reaches with 95% probability); min and max for ten samples or fewer."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        raise HarnessError("no samples to take a median interval of")
    k = max(0, math.floor(n / 2 - z * math.sqrt(n) / 2))
    return ordered[k], ordered[n - 1 - k]


def _latency_interval(case: CaseResult) -> tuple[float | None, float | None]:
    samples = case.extra.get("latency_samples_ms")
    if isinstance(samples, list) and samples and all(isinstance(v, int | float) for v in samples):
        return median_interval([float(v) for v in samples])
    return None, None


def more_accurate(a: PlotPoint, b: PlotPoint) -> bool:
    """Return True when `a` is more accurate than `b` beyond the noise of the eval set.

    With both points' per-image correctness on the same images: the exact one-sided McNemar test at
    ACCURACY_ALPHA (a handful of images of difference on 500 is a tie). Without it: the plain comparison.
    """
    if a.correct is not None and b.correct is not None and len(a.correct) == len(b.correct) and a.correct:
        return paired_accuracy(a.correct, b.correct).p_value <= ACCURACY_ALPHA  # "b is worse than a"
    return a.top1 > b.top1


def dominates(a: PlotPoint, b: PlotPoint) -> bool:
    """Return True when `a` is at least as fast as `b`, `b` is not more accurate, and `a` is faster or more
    accurate: an accuracy gap the eval set cannot tell from noise counts as a tie."""
    if a.latency_ms > b.latency_ms or more_accurate(b, a):
        return False
    return a.latency_ms < b.latency_ms or more_accurate(a, b)


def pareto_front(points: Sequence[PlotPoint]) -> list[PlotPoint]:
    """Return the accuracy-latency front by rising latency: the fastest point, then each slower point that is
    measurably more accurate (more_accurate: McNemar on the same images at ACCURACY_ALPHA) than the last one kept.

    A few images of difference therefore never buy a place on the front. Without per-image results it is the plain
    Pareto front (no other point at least as fast and as accurate, strictly better in one); identical points are
    all kept. Values must be finite.
    """
    front: list[PlotPoint] = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.top1)):
        last = front[-1] if front else None
        if last is None or (point.latency_ms, point.top1) == (last.latency_ms, last.top1) or more_accurate(point, last):
            front.append(point)
    return front


def _ok(case: CaseResult) -> bool:
    return case.status == "ok" and case.top1 is not None and "median" in case.latency_ms


def plot_points(cases: Sequence[CaseResult], batch_size: int) -> list[PlotPoint]:
    """Return the measured cases at `batch_size` as plot points (median latency, top-1, variant, size MB)."""
    return [
        PlotPoint(
            c.latency_ms["median"],
            float(c.top1 or 0.0),
            c.variant,
            (c.size_bytes or 0) / MB,
            tuple(c.correct) if c.correct else None,
            *_latency_interval(c),
        )
        for c in cases
        if c.batch_size == batch_size and _ok(c) and math.isfinite(c.latency_ms["median"])
    ]


def accuracy_interval(point: PlotPoint, reference: PlotPoint | None) -> tuple[float, float]:
    """Return the 95% interval of the point's top-1 that the plot draws.

    Against the reference (fp32) on the same images: the reference's top-1 minus the paired (Tango score) interval
    of the drop, so two variants that agree image by image get a narrow bar; the reference itself has none. Without
    per-image results on both: the point's own top-1 (no bar).
    """
    if reference is None or point is reference or not point.correct or not reference.correct:
        return point.top1, point.top1
    if len(point.correct) != len(reference.correct):
        return point.top1, point.top1
    low, high = drop_interval(paired_accuracy(reference.correct, point.correct))
    return max(reference.top1 - high, 0.0), min(reference.top1 - low, 1.0)


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and never touches pyplot's state
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    if points:
        reference = next((p for p in points if p.label == REFERENCE_LABEL), None)
        bars = [accuracy_interval(p, reference) for p in points]
        ax.errorbar(
            [p.latency_ms for p in points],
            [p.top1 * 100 for p in points],
            yerr=[[(p.top1 - lo) * 100 for p, (lo, _hi) in zip(points, bars, strict=True)],
                  [(hi - p.top1) * 100 for p, (_lo, hi) in zip(points, bars, strict=True)]],
            xerr=[[p.latency_ms - (p.latency_low if p.latency_low is not None else p.latency_ms) for p in points],
                  [(p.latency_high if p.latency_high is not None else p.latency_ms) - p.latency_ms for p in points]],
            fmt="none",
            ecolor="gray",
            elinewidth=0.8,
            capsize=2,
            label="95% intervals: top-1 against fp32 on the same images (paired); median latency of the rounds",
        )
        ax.scatter(
            [p.latency_ms for p in points],
            [p.top1 * 100 for p in points],
            s=[marker_area(p) for p in points],  # area ∝ MB; unknown size: small
            alpha=0.55,
            edgecolors="black",
            linewidths=0.6,
        )
        front = pareto_front(points)
        ax.step(
            [p.latency_ms for p in front],
            [p.top1 * 100 for p in front],
            where="post",
            color="tab:red",
            linewidth=1.2,
            label="Pareto front (fastest for an accuracy measurably above the faster points')",
        )
        ax.scatter(
            [p.latency_ms for p in front],
            [p.top1 * 100 for p in front],
            s=[marker_area(p) for p in front],
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.6,
        )
        ax.set_xscale("log")
        ax.margins(x=0.08, y=0.08)  # room for the labels of the outermost points
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.legend(loc="best", fontsize=8, title="marker area ∝ size (MB)", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measured cases", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency, median (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        FigureCanvasAgg(fig)
        fig.draw_without_rendering()  # the layout and the scales first, so that labels are placed where they end up
        place_labels(fig, ax, points)
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


LABEL_PLACES = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1), (2, 1), (2, -1), (-2, 1),
                (-2, -1), (0, 2), (0, -2))
"""Where a point's label may go, as (right, up) steps of its marker's radius plus a gap, tried in this order."""
LABEL_GAP = 3.0
"""Points between a marker's edge and its label."""


def marker_area(point: PlotPoint) -> float:
    """Return the marker's area in points squared: proportional to the model's size (small when unknown)."""
    return 12 * point.size_mb if point.size_mb > 0 else 15.0


def _put_label(text: Any, place: tuple[int, int], radius: float, renderer: Any) -> Any:
    """Move a label to `place` (steps of `radius` points from its point); return its box on the canvas."""
    right, up = place
    text.set_position((right * radius, up * radius))
    text.set_horizontalalignment("left" if right > 0 else "right" if right < 0 else "center")
    text.set_verticalalignment("bottom" if up > 0 else "top" if up < 0 else "center")
    return text.get_window_extent(renderer)


def _label_cost(box: Any, frame: Any, obstacles: Sequence[Any]) -> int:
    """Return how bad a label's place is: the boxes it overlaps, and 100 if it leaves the axes."""
    inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
    return (0 if inside else 100) + sum(box.overlaps(other) for other in obstacles)


def place_labels(fig: Any, ax: Any, points: Sequence[PlotPoint]) -> None:
    """Label each point at the first of LABEL_PLACES where its text stays inside the axes and overlaps no label
    already placed and no other marker (the fastest point first); without such a place, where it overlaps least."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    markers = []
    for p in points:
        x, y = ax.transData.transform((p.latency_ms, p.top1 * 100))
        r = math.sqrt(marker_area(p)) / 2 * to_pixels
        markers.append((p, Bbox.from_extents(x - r, y - r, x + r, y + r)))
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for p in sorted(points, key=lambda q: (q.latency_ms, -q.top1)):
        radius = math.sqrt(marker_area(p)) / 2 + LABEL_GAP
        text = ax.annotate(p.label, (p.latency_ms, p.top1 * 100), xytext=(0, 0), textcoords="offset points", fontsize=8)
        text.set_in_layout(False)  # the layout is done: a label must not move the axes it was placed in
        obstacles = [*placed, *(box for q, box in markers if q is not p)]
        costs = [_label_cost(_put_label(text, place, radius, renderer), frame, obstacles) for place in LABEL_PLACES]
        placed.append(_put_label(text, LABEL_PLACES[costs.index(min(costs))], radius, renderer))


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
                _measured_change(case),
                SIZE.format(SIZE.read(case)),
                LATENCY.format(LATENCY.read(case)),
            ]
        lines.append(
            f"| {claim.method} | {claimed_change} | {claim.size_mb:.1f} | {claim.latency_ms:.1f} "
            f"| {claim.variant} | " + " | ".join(measured) + " |"
        )
    return lines


def _measured_change(case: CaseResult) -> str:
    """Return the measured top-1 change the article's column stands for: against fp32, except distillation's,
    which is against the same fine-tune without the teacher (its gain over fp32 is mostly the fine-tune's)."""
    if case.variant == "fp32":
        return "ref"
    gain = case.extra.get("distill_gain_vs_baseline")
    if case.variant == "distill" and isinstance(gain, int | float):
        p_value = case.extra.get("distill_gain_p_value")
        p_text = f", p = {p_value:.2g}" if isinstance(p_value, int | float) else ""
        verdict = "" if case.extra.get("distill_meaningful", True) else "; not meaningful: the teacher is no better"
        return f"{gain * 100:+.2f}% against the same fine-tune without the teacher{p_text}{verdict}"
    return f"{case.top1_change * 100:+.2f}%" if case.top1_change is not None else "-"


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
