"""Tests of harness.report: the markdown and PNG it writes, and the Pareto front's properties."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from _gate import make_case, make_record, make_run, with_wrong
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.report import (
    CLAIMS_LABEL,
    PlotPoint,
    accuracy_interval,
    dominates,
    more_accurate,
    pareto_front,
    report_command,
)
from harness.results import CaseResult, save_run
from harness.stats import paired_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report_cases() -> list[CaseResult]:
    cases = []
    for bs, scale in ((1, 1.0), (32, 20.0)):
        cases += [
            make_case("fp32", batch_size=bs, median=30.0 * scale, speedup=None, size_bytes=46_800_000),
            make_case(
                "static_int8", batch_size=bs, median=8.0 * scale, correct=with_wrong(5), size_bytes=11_800_000
            ),
            make_case(
                "dynamic_int8", batch_size=bs, median=31.0 * scale, speedup=0.97, size_bytes=45_300_000
            ),
            make_case("bf16", batch_size=bs, status="skipped"),
        ]
    return cases


def test_report_writes_markdown_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "run.json"
    save_run(results, make_run(report_cases()))
    assert report_command(results, out_dir=None, batch_size=None) == 0
    md, png = tmp_path / "run.md", tmp_path / "run.png"
    assert capsys.readouterr().out.split() == [str(md), str(png)]
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark report: run\n")
    assert "| method | bs | top-1 |" in text  # the article-shaped table of harness.table
    assert "## Accuracy against latency (batch 32)" in text and "![top-1 against latency](run.png)" in text
    assert (
        CLAIMS_LABEL in text and "| dynamic int8 quantization | -1.2% | 11.3 | 8.7 | dynamic_int8 |" in text
    )
    assert "| distillation | +2.5% | 44.6 | 15.2 | distill | not measured |" in text
    # static_int8 is faster but less accurate than fp32, dynamic_int8 is dominated by fp32
    assert "Pareto front: static_int8 (160.00 ms, 99.00%) → fp32 (600.00 ms, 100.00%)" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_at_a_chosen_batch_size_into_out_dir(tmp_path: Path) -> None:
    results = tmp_path / "run.json"
    save_run(results, make_run(report_cases()))
    out = tmp_path / "report"
    assert report_command(results, out_dir=out, batch_size=1) == 0
    assert (out / "run.png").read_bytes().startswith(PNG_MAGIC)
    assert "## Accuracy against latency (batch 1)" in (out / "run.md").read_text(encoding="utf-8")
    with pytest.raises(HarnessError, match="--batch-size 7 has no measured case.*choose from 1, 32"):
        report_command(results, out_dir=out, batch_size=7)


def test_report_of_a_run_with_nothing_measured(tmp_path: Path) -> None:
    results = tmp_path / "empty.json"
    save_run(results, make_run([make_case("bf16", status="skipped")]))
    assert report_command(results, out_dir=None, batch_size=None) == 0
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)
    assert "Pareto front: none" in (tmp_path / "empty.md").read_text(encoding="utf-8")


finite = st.floats(min_value=0.01, max_value=1e4, allow_nan=False, allow_infinity=False)
points = st.lists(
    st.builds(PlotPoint, finite, st.floats(min_value=0.0, max_value=1.0), st.sampled_from("abc"), correct=st.none()),
    max_size=25,
)
N_IMAGES = 40
scored = st.lists(
    st.builds(
        lambda latency, correct: PlotPoint(latency, sum(correct) / N_IMAGES, correct=tuple(correct)),
        finite,
        st.lists(st.booleans(), min_size=N_IMAGES, max_size=N_IMAGES),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(scored)
def test_each_step_of_the_front_is_measurably_more_accurate(pts: list[PlotPoint]) -> None:
    """With per-image results: the fastest point first, then each step measurably more accurate than the last,
    and no point left off is measurably more accurate than the front at its latency."""
    front = pareto_front(pts)
    assert (front == []) == (pts == [])
    if not front:
        return
    assert front[0].latency_ms == min(p.latency_ms for p in pts)
    for before, after in zip(front, front[1:], strict=False):
        assert after.latency_ms >= before.latency_ms
        assert more_accurate(after, before) or (after.latency_ms, after.top1) == (before.latency_ms, before.top1)
    for p in pts:
        if p not in front:
            kept = [f for f in front if f.latency_ms <= p.latency_ms]
            assert kept and not more_accurate(p, kept[-1])


@settings(max_examples=200, deadline=None)
@given(points)
def test_pareto_front_is_undominated_and_dominates_the_rest(pts: list[PlotPoint]) -> None:
    front = pareto_front(pts)
    assert all(p in pts for p in front)
    assert not any(dominates(q, p) for p in front for q in pts)
    off = list(pts)
    for p in front:
        off.remove(p)
    assert all(any(dominates(f, p) for f in front) for p in off)
    latencies = [p.latency_ms for p in front]
    assert latencies == sorted(latencies)
    accuracies = [p.top1 for p in front]
    assert accuracies == sorted(accuracies)  # along the front, more latency buys more accuracy


def test_pareto_front_keeps_ties_and_drops_dominated() -> None:
    a, b, c = PlotPoint(1.0, 0.9, "a"), PlotPoint(1.0, 0.9, "b"), PlotPoint(2.0, 0.9, "c")
    assert pareto_front([c, a, b]) == [a, b]
    assert pareto_front([]) == []


def wrong_on(wrong: range, n: int = 500) -> tuple[bool, ...]:
    return tuple(i not in wrong for i in range(n))


def test_a_few_images_of_difference_buy_no_place_on_the_front() -> None:
    """6 images net on 500, with disagreements both ways (14 against 8): a tie; 40 images one way: a step."""
    fast = PlotPoint(10.0, 480 / 500, "fast", correct=wrong_on(range(0, 20)))
    slower = PlotPoint(20.0, 486 / 500, "slower", correct=wrong_on(range(14, 28)))
    assert paired_accuracy(fast.correct, slower.correct).p_value > 0.1  # type: ignore[arg-type]
    assert pareto_front([slower, fast]) == [fast]
    assert not more_accurate(slower, fast) and dominates(fast, slower)
    much_better = PlotPoint(30.0, 1.0, "much better", correct=wrong_on(range(0)))
    assert pareto_front([slower, fast, much_better]) == [fast, much_better]


def test_the_interval_is_paired_against_fp32_narrow_when_the_models_agree() -> None:
    fp32 = PlotPoint(1.0, 480 / 500, "fp32", correct=wrong_on(range(0, 20)))
    agrees = PlotPoint(2.0, 479 / 500, "agrees", correct=wrong_on(range(0, 21)))  # one more image wrong
    differs = PlotPoint(3.0, 479 / 500, "differs", correct=wrong_on(range(10, 31)))  # 10 lost, 11 more wrong
    assert accuracy_interval(fp32, fp32) == (fp32.top1, fp32.top1)
    (lo_a, hi_a), (lo_d, hi_d) = accuracy_interval(agrees, fp32), accuracy_interval(differs, fp32)
    assert lo_a < agrees.top1 <= hi_a and lo_d < differs.top1 < hi_d
    assert hi_a - lo_a < (hi_d - lo_d) / 2  # agreement image by image is what the paired interval sees
    assert accuracy_interval(agrees, None) == (agrees.top1, agrees.top1)


def test_the_article_table_shows_distillation_against_its_no_teacher_student(tmp_path: Path) -> None:
    distill = make_case("distill", median=30.0, correct=with_wrong(8))
    distill = replace(distill, extra={"distill_gain_vs_baseline": 0.004, "distill_gain_p_value": 0.31,
                                      "distill_meaningful": False})
    path = tmp_path / "run.json"
    save_run(path, make_record([make_case("fp32", median=30.0, speedup=None), distill]))
    report_command(path, out_dir=None, batch_size=None)
    text = (tmp_path / "run.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| distillation |"))
    assert "+0.40% against the same fine-tune without the teacher, p = 0.31" in row and "not meaningful" in row


def test_labels_of_a_dense_cluster_overlap_no_other_label_or_marker_and_stay_in_the_axes() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from harness.report import marker_area, place_labels

    names = ["fp32", "bf16", "compile", "channels_last", "dynamic_int8", "prune_unstructured+dynamic_int8",
             "distill+prune_unstructured", "static_int8"]
    points = [PlotPoint(25.0 + 1.5 * i, 0.978 - 0.002 * (i % 3), name, 44.8) for i, name in enumerate(names)]
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([p.latency_ms for p in points], [p.top1 * 100 for p in points], s=[marker_area(p) for p in points])
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    place_labels(fig, ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(points)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    frame = ax.get_window_extent(renderer)
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
