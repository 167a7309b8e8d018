"""One series as an inline SVG chart: values, their spread, the baseline, the window and its limit, the steps."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

from harness.history.series import Point
from harness.history.verdict import Verdict

Scale = Callable[[float], float]
WIDTH, HEIGHT = 660, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 20, 30
WORSE, BETTER, LINE, BAND, LEVEL = "#c62828", "#2e7d32", "#1f4e9c", "#c9d8f0", "#6d6d6d"


def fmt(metric: str, value: float | None) -> str:
    """Return `value` in the metric's unit: 1.234x for ratios, 97.80% for top1, MB for bytes, G for MACs."""
    if value is None or not math.isfinite(value):
        return "-"
    if metric == "top1":
        return f"{value * 100:.2f}%"
    if metric.endswith("_bytes"):
        return f"{value / 1e6:.3f} MB"
    if metric == "macs":
        return f"{value / 1e9:.4f} G"
    return f"{value:.3f}x"


def esc(text: object) -> str:
    """Return `text` escaped for HTML text and attributes."""
    return html.escape(str(text), quote=True)


def chart(verdict: Verdict) -> str:
    """Return the SVG of one series: spread band, level (baseline) line, values, window and limit, steps."""
    series = verdict.series
    points = series.points
    name = series.metric.name
    n = len(points)
    ys = [p.value for p in points] + list(verdict.levels)
    ys += [v for p in points for v in (p.low, p.high) if v is not None]
    if verdict.limit is not None:
        ys.append(verdict.limit)
    low, high = min(ys), max(ys)
    pad = (high - low) * 0.08 or abs(high) * 0.01 or 1.0
    low, high = low - pad, high + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    dx = plot_w / max(n - 1, 1)

    def x(i: float) -> float:
        return LEFT + (i * dx if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + (high - v) / (high - low) * plot_h

    out = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
           f'aria-label="{esc(series.key.case_id)} {esc(name)} over {n} runs">']
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ddd"/>')
    if verdict.window_start is not None and series.metric.judged == "timing" and n > 1:
        x0, x1 = max(x(verdict.window_start) - dx / 2, LEFT), min(x(n - 1) + dx / 2, WIDTH - RIGHT)
        out.append(f'<rect x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" '
                   f'height="{plot_h}" fill="#f3f3f3"><title>the window the newest run is judged against'
                   "</title></rect>")
    for tick in (low + pad, (low + high) / 2, high - pad):
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{esc(fmt(name, tick))}</text>')
    band = [(i, p.low, p.high) for i, p in enumerate(points) if p.low is not None and p.high is not None]
    if band:
        upper = " ".join(f"{x(i):.1f},{y(hi):.1f}" for i, _lo, hi in band)
        lower = " ".join(f"{x(i):.1f},{y(lo):.1f}" for i, lo, _hi in reversed(band))
        out.append(f'<polygon points="{upper} {lower}" fill="{BAND}" opacity="0.8">'
                   "<title>95% interval of each run's ratio</title></polygon>")
    out.extend(_levels(verdict, x, y, dx))
    if verdict.limit is not None and verdict.window_start is not None:
        ly = y(verdict.limit)
        x0, x1 = max(x(verdict.window_start) - dx / 2, LEFT), min(x(n - 1) + dx / 2, WIDTH - RIGHT)
        out.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" '
                   f'y1="{ly:.1f}" y2="{ly:.1f}" stroke="{WORSE}" stroke-dasharray="2 3">'
                   f"<title>limit of the newest run: {esc(fmt(name, verdict.limit))}</title></line>")
    path = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
    out.append(f'<polyline points="{path}" fill="none" stroke="{LINE}" stroke-width="1.3"/><g fill="{LINE}">')
    for k, step in enumerate(verdict.steps):
        sx = (x(step.before) + x(step.after)) / 2
        color = WORSE if step.worse else BETTER
        size = f"{step.change * 100:+.2f}pt" if name == "top1" else f"{step.change:+.1%}"
        label = f"step {size}" if step.confirmed else f"jump {size}, unconfirmed"
        dash = "5 3" if step.confirmed else "2 3"
        out.append(f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{color}" '
                   f'stroke-width="1.5" stroke-dasharray="{dash}"><title>{label} between '
                   f"{esc(points[step.before].run.label)} and {esc(points[step.after].run.label)}</title></line>")
        anchor = "end" if sx > WIDTH - 160 else "start"
        row = TOP + 11 + 12 * (k % 3)  # neighbouring steps' labels on different rows
        out.append(f'<text x="{sx + (-3 if anchor == "end" else 3):.1f}" y="{row}" text-anchor="{anchor}" '
                   f'style="fill:{color};font-weight:600">{esc(label)}</text>')
    radius = 2.6 if n <= 120 else 1.6
    env = esc(series.key.env_key)
    for i, p in enumerate(points):  # every run keeps its point and its tooltip: nothing is thinned out
        spread = "" if p.low is None or p.high is None else f" ({fmt(name, p.low)} to {fmt(name, p.high)})"
        title = f"{esc(p.run.label)} · {env} · {esc(fmt(name, p.value))}{esc(spread)}"
        out.append(f'<circle cx="{x(i):.0f}" cy="{y(p.value):.1f}" r="{radius}"><title>{title}</title></circle>')
    out.append("</g>")
    if any(f.fails and f.rule == "newest" for f in verdict.findings):
        out.append(f'<circle cx="{x(n - 1):.1f}" cy="{y(points[-1].value):.1f}" r="4.5" fill="{WORSE}">'
                   f"<title>{esc(verdict.findings[0].message)}</title></circle>")
    out.extend(_x_labels(points, x))
    out.append("</svg>")
    return "".join(out)


def _levels(verdict: Verdict, x: Scale, y: Scale, dx: float) -> list[str]:
    """Return the baseline: the level of each stretch between steps, as horizontal dashed lines."""
    out = []
    levels = verdict.levels
    start = 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i] != levels[start]:
            x0, x1 = x(start) - dx / 2, x(i - 1) + dx / 2
            ly = y(levels[start])
            out.append(f'<line x1="{max(x0, LEFT):.1f}" x2="{min(x1, WIDTH - RIGHT):.1f}" y1="{ly:.1f}" '
                       f'y2="{ly:.1f}" stroke="{LEVEL}" stroke-width="1.6" stroke-dasharray="6 3">'
                       f"<title>baseline (level) {esc(fmt(verdict.series.metric.name, levels[start]))}</title></line>")
            start = i
    return out


def _x_labels(points: Sequence[Point], x: Scale) -> list[str]:
    n = len(points)
    picks = sorted({0, n // 2, n - 1}) if n > 2 else list(range(n))
    out = []
    for i in picks:
        run = points[i].run
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        text = f"#{run.id} {run.created[:10]} {run.created[11:16]}"
        out.append(f'<text x="{x(i):.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}">{esc(text)}</text>')
    return out
