"""The article-shaped results table, as aligned text for the terminal or as markdown."""

from __future__ import annotations

from collections.abc import Sequence

from harness.results import METRICS, CaseResult, RunRecord

TABLE_METRICS = tuple(m for m in METRICS if m.in_table)
COLUMNS = ("method", "bs", *(m.heading for m in TABLE_METRICS))


def case_row(case: CaseResult) -> list[str]:
    """Return one table row for a case (a skipped case shows its reason)."""
    if case.status != "ok":
        return [case.variant, str(case.batch_size), f"{case.status}: {case.reason or ''}"] + [""] * (len(COLUMNS) - 3)
    return [case.variant, str(case.batch_size), *(m.table_cell(case) for m in TABLE_METRICS)]


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
