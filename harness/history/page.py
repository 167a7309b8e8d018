"""The trend page: one self-contained HTML file (inline CSS and SVG, no script, nothing fetched), regressions first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.gate.thresholds import Thresholds
from harness.history.chart import chart, esc, fmt
from harness.history.series import Run
from harness.history.verdict import Verdict
from harness.jsonio import write_atomic

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
 padding:0 16px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 6px}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
.fail{color:#c62828;font-weight:600}.ok{color:#2e7d32;font-weight:600}.muted{color:#777}
.banner{padding:10px 14px;border-radius:6px;margin:12px 0;font-weight:600}
.banner.fail{background:#fdecea;border:1px solid #f5c2c0}.banner.ok{background:#e9f5ea;border:1px solid #bfe0c2}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(660px,1fr));gap:14px}
.chart{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:8px 10px}
.chart.failed{border:2px solid #c62828}
.chart h3{font-size:14px;margin:0 0 2px}.chart p{margin:0 0 4px;font-size:12px;color:#444}
svg text{font:11px system-ui,sans-serif;fill:#444}
.legend span{margin-right:14px;font-size:12px;color:#444}
code{font-size:12px}
"""


@dataclass(frozen=True)
class Page:
    """What the page shows: the verdicts, every run, where they came from and under which rules."""

    verdicts: Sequence[Verdict]
    runs: Sequence[Run]
    store: Path
    thresholds: Thresholds


def _order(verdict: Verdict) -> tuple[int, str, str]:
    rank = 0 if verdict.failed else 1 if verdict.steps else 2
    return rank, verdict.series.key.case_id, verdict.series.key.metric


def charted(verdict: Verdict) -> bool:
    """Return True when the series gets a chart: timing always, a deterministic metric only when it changed."""
    return verdict.series.metric.judged == "timing" or bool(verdict.steps) or verdict.failed


def _finding_rows(verdicts: Sequence[Verdict], failing: bool) -> list[str]:
    rows = []
    for v in verdicts:
        for f in v.findings:
            if f.fails != failing or (not failing and f.rule != "step"):
                continue
            key = v.series.key
            rows.append(
                f'<tr><td><a href="#{esc(key.anchor)}">{esc(key.case_id)}</a></td><td>{esc(key.metric)}</td>'
                f'<td>{esc(f.rule)}</td><td>{esc(f.message)}</td><td class="muted">{esc(key.env_key)}</td></tr>'
            )
    return rows


def _when(run: Run) -> str:
    return f"{run.created[:10]} {run.created[11:16]}"


def _header(page: Page, judged: Sequence[Verdict]) -> list[str]:
    runs = sorted(page.runs, key=lambda r: (r.created, r.id))
    envs = sorted({r.env_key for r in runs})
    h = page.thresholds.history
    span = f"{_when(runs[0])} to {_when(runs[-1])} UTC" if runs else "no runs"
    failed = [v for v in judged if v.failed]
    out = [
        "<h1>Nightly history</h1>",
        f'<p class="meta">{len(runs)} runs, {span}; store <code>{esc(page.store)}</code>; '
        f"{len(envs)} environment(s): {esc(', '.join(envs))}</p>",
        f'<p class="meta">Rules ({esc(page.thresholds.path)} "history"): newest run against the mean of up to '
        f"{h.window} runs before it, fails beyond z {h.z:g} with a change of at least {h.min_change:.0%}; steps by "
        f"ruptures (penalty {h.penalty:g}), fail once {h.confirm} runs follow them and while among the newest "
        f"{h.new_runs} runs; drift: mean of the newest {h.smooth} runs against the best such mean of the window, fails "
        f"beyond {h.drift_limit:.0%}.</p>",
    ]
    if failed:
        out.append(f'<div class="banner fail">{len(failed)} of {len(judged)} series fail the check</div>')
    else:
        out.append(f'<div class="banner ok">All {len(judged)} judged series pass the check</div>')
    return out


def render(page: Page) -> str:
    """Return the page's HTML."""
    verdicts = sorted(page.verdicts, key=_order)
    judged = [v for v in verdicts if v.judged]
    parts = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             f"<title>Nightly history: {sum(v.failed for v in verdicts)} regression(s)</title><style>{CSS}</style>"
             "</head><body>"]
    parts += _header(page, judged)
    head = "<tr><th>case</th><th>metric</th><th>rule</th><th>what</th><th>environment</th></tr>"
    failing = _finding_rows(verdicts, True)
    parts.append(f"<h2 id=\"regressions\">Regressions ({len(failing)})</h2>")
    parts.append(f"<table>{head}{''.join(failing)}</table>" if failing else
                 '<p class="ok">None: every judged series is within its window, with no new step and no drift.</p>')
    steps = _finding_rows(verdicts, False)
    if steps:
        parts.append(f"<h2>Other recent steps ({len(steps)})</h2><table>{head}{''.join(steps)}</table>")
    parts.append('<h2>Trends</h2><p class="legend"><span style="color:#1f4e9c">&#9679; run</span>'
                 '<span style="color:#8aa6d6">&#9632; 95% interval</span>'
                 '<span style="color:#6d6d6d">- - baseline (level between steps)</span>'
                 '<span style="color:#c62828">&#183;&#183;&#183; limit of the newest run</span>'
                 '<span style="color:#999">&#9632; window</span>'
                 '<span style="color:#c62828">| step worse</span><span style="color:#2e7d32">| step better</span>'
                 "</p>")
    for env in sorted({v.series.key.env_key for v in verdicts}):
        mine = [v for v in verdicts if v.series.key.env_key == env]
        parts.append(f"<h3>{esc(env)}</h3><div class=\"grid\">")
        parts.extend(_card(v) for v in mine if charted(v))
        parts.append("</div>")
        quiet = [v for v in mine if not charted(v)]
        if quiet:
            names = sorted({v.series.key.metric for v in quiet})
            parts.append(f'<p class="muted">Unchanged in every run ({len(quiet)} series, no chart): '
                         f"{esc(', '.join(names))}.</p>")
    parts.append(_runs_table(page.runs))
    parts.append("</body></html>\n")
    return "".join(parts)


def _card(verdict: Verdict) -> str:
    key = verdict.series.key
    metric = verdict.series.metric
    last = verdict.series.points[-1]
    state = '<span class="fail">FAIL</span>' if verdict.failed else '<span class="ok">ok</span>'
    if not verdict.judged:
        state = '<span class="muted">too few runs</span>'
    direction = "higher is better" if metric.higher_is_better else "lower is better"
    busy = f"; {verdict.series.busy} busy run(s) left out" if verdict.series.busy else ""
    lines = "".join(f"<p>{'<b>' if f.fails else ''}{esc(f.message)}{'</b>' if f.fails else ''}</p>"
                    for f in verdict.findings if f.fails)
    return (
        f'<div class="chart{" failed" if verdict.failed else ""}" id="{esc(key.anchor)}">'
        f"<h3>{state} {esc(key.case_id)} · {esc(key.metric)}</h3>"
        f"<p>{esc(direction)}; newest {esc(fmt(key.metric, last.value))} at {esc(last.run.label)}; "
        f"{len(verdict.series.points)} runs; {len(verdict.steps)} step(s){esc(busy)}</p>"
        f"{lines}{chart(verdict)}</div>"
    )


def _runs_table(runs: Sequence[Run]) -> str:
    ordered = sorted(runs, key=lambda r: (r.created, r.id), reverse=True)
    rows = "".join(
        f"<tr><td>#{r.id}</td><td>{esc(r.created)}</td><td><code>{esc(r.commit or '-')}</code>"
        f"{' (dirty)' if r.dirty else ''}</td><td>{esc(r.env_key)}</td><td>{esc(r.source)}</td></tr>"
        for r in ordered
    )
    return (f"<h2>Runs</h2><details{' open' if len(runs) <= 30 else ''}><summary>{len(runs)} runs, newest first"
            "</summary><table><tr><th>run</th><th>date (UTC)</th><th>commit</th><th>environment</th><th>file</th></tr>"
            f"{rows}</table></details>")


def write_page(path: Path, page: Page) -> None:
    """Write the page to `path` atomically."""
    text = render(page)
    write_atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))
