"""The article-shaped results table, as aligned text for the terminal or as markdown."""

from __future__ import annotations

from collections.abc import Sequence

from harness.results import CaseResult, RunRecord

MB = 1e6
COLUMNS = (
    "method",
    "bs",
    "top-1",
    "Δ top-1",
    "size MB",
    "gzip MB",
    "non-zero",
    "GMACs",
    "coverage",
    "latency ms (p90)",
    "img/s",
    "speedup",
    "peak MB",
)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}%"


def _coverage(case: CaseResult) -> str:
    """Return the least-covering technique's MAC fraction: what the variant really transformed."""
    fractions = [v["macs_fraction"] for k, v in case.coverage.items() if k != "fp32"]
    if not fractions:
        return "-"
    low = min(fractions)
    return f"{low:.2%}" if low >= 0.01 else f"{low:.3%}"


def case_row(case: CaseResult) -> list[str]:
    """Return one table row for a case (a skipped case shows its reason)."""
    if case.status != "ok":
        return [case.variant, str(case.batch_size), f"{case.status}: {case.reason or ''}"] + [""] * (len(COLUMNS) - 3)
    latency = case.latency_ms
    nonzero = f"{case.nonzero_params / case.params:.0%}" if case.params and case.nonzero_params is not None else "-"
    speedup = "ref" if case.variant == "fp32" else (f"{case.speedup_vs_fp32:.2f}x" if case.speedup_vs_fp32 else "-")
    return [
        case.variant,
        str(case.batch_size),
        _pct(case.top1),
        "ref" if case.variant == "fp32" else _pct(case.top1_change, signed=True),
        f"{case.size_bytes / MB:.1f}" if case.size_bytes is not None else "-",
        f"{case.compressed_size_bytes / MB:.1f}" if case.compressed_size_bytes is not None else "-",
        nonzero,
        f"{case.macs / 1e9:.3f}" if case.macs is not None else "-",
        _coverage(case),
        f"{latency['median']:.2f} ({latency['p90']:.2f})" if "median" in latency else "-",
        f"{case.throughput_ips:.1f}" if case.throughput_ips else "-",
        speedup,
        f"{case.peak_memory_bytes / MB:.1f}" if case.peak_memory_bytes is not None else "-",
    ]


def text_table(cases: Sequence[CaseResult]) -> str:
    """Return the cases as an aligned text table; a skipped case's reason spans the columns."""
    header = list(COLUMNS)
    rows = [case_row(c) for c in cases]
    measured = [r for r, c in zip(rows, cases, strict=True) if c.status == "ok"]
    widths = [max(len(r[i]) for r in [header, *measured]) for i in range(len(COLUMNS))]

    def aligned(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    lines = [aligned(header), "  ".join("-" * w for w in widths)]
    for row, case in zip(rows, cases, strict=True):
        lines.append(
            aligned(row) if case.status == "ok" else f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}"
        )
    return "\n".join(lines)


def markdown_table(cases: Sequence[CaseResult]) -> str:
    """Return the cases as a markdown table (a PR comment, the report)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for case in cases:
        row = case_row(case)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def notes_lines(record: RunRecord) -> list[str]:
    """Return each note once, with the variants it belongs to (notes repeat across batch sizes)."""
    variants_of: dict[str, list[str]] = {}
    for case in record.cases:
        for note in case.notes:
            owners = variants_of.setdefault(note, [])
            if case.variant not in owners:
                owners.append(case.variant)
    return [f"[{', '.join(owners)}] {note}" for note, owners in variants_of.items()]
