"""`history add | check | report`: exit codes, the page (regressions first, offline), a real browser, the workflow."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _gate import make_case, make_record

from harness.errors import HarnessError
from harness.history.cli import add_history_parser, run_history
from harness.history.store import STORE_ENV
from harness.results import save_run

REPO = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def history(*argv: str) -> int:
    """Run `python -m harness history ARGV` as __main__ does (parser, then run_history)."""
    parser = argparse.ArgumentParser(prog="python -m harness")
    add_history_parser(parser.add_subparsers(dest="command", required=True))
    return run_history(parser.parse_args(["history", *argv]))


def nights(folder: Path, count: int, *, slow_from: int | None = None, start: int = 0) -> list[str]:
    """Write `count` nights of results (fp32 and dynamic_int8, 1.6% noise); dynamic_int8 15% slower from `slow_from`."""
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + count):
        speedup = 2.0 * float(np.exp(rng.normal(0, 0.016))) / (1.15 if slow_from is not None and i >= slow_from else 1)
        cases = [make_case("fp32", latency_ratio=float(np.exp(rng.normal(0, 0.01)))),
                 make_case("dynamic_int8", speedup=speedup)]
        record = make_record(cases, git_commit=f"{i:040x}")
        record.created = f"2026-11-{1 + i:02d}T02:23:00+00:00"
        path = folder / f"night-{i:02d}.json"
        save_run(path, record)
        paths.append(str(path))
    return paths


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A history of ten steady nights."""
    path = tmp_path / "history.sqlite"
    assert history("add", "--store", str(path), *nights(tmp_path, 10)) == 0
    return path


def test_check_passes_on_steady_nights_and_fails_on_a_slow_one(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert history("check", "--store", str(store)) == 0
    assert "history check passed" in capsys.readouterr().out
    assert history("add", "--store", str(store), *nights(tmp_path, 1, slow_from=10, start=10)) == 0
    assert history("check", "--store", str(store)) == 1
    out = capsys.readouterr().out
    assert "FAIL dynamic_int8-cpu-bs1 speedup_vs_fp32" in out and "outside the window" in out
    assert "fp32-cpu-bs1" not in out.split("history check failed")[0].split("FAIL")[1]


def test_adding_again_says_so_and_the_environment_names_the_store(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    monkeypatch.setenv(STORE_ENV, str(store))
    assert history("add", str(tmp_path / "night-03.json")) == 0
    assert "already stored, not added again" in capsys.readouterr().out
    assert history("check") == 0


def test_user_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no history store at .*history add"):
        history("check", "--store", str(tmp_path / "none.sqlite"))
    with pytest.raises(HarnessError, match=r"missing\.json does not exist"):
        history("add", "--store", str(tmp_path / "h.sqlite"), str(tmp_path / "missing.json"))
    assert not (tmp_path / "h.sqlite").exists()
    with pytest.raises(HarnessError, match="--html .* is a folder"):
        history("report", "--store", str(tmp_path / "h.sqlite"), "--html", str(tmp_path))


def page_of(store: Path, tmp_path: Path) -> str:
    out = tmp_path / "page" / "history.html"
    assert history("report", "--store", str(store), "--html", str(out)) == 0
    return out.read_text(encoding="utf-8")


def test_the_page_lists_regressions_first_and_marks_the_step(store: Path, tmp_path: Path) -> None:
    history("add", "--store", str(store), *nights(tmp_path, 3, slow_from=10, start=10))
    text = page_of(store, tmp_path)
    assert text.index("Regressions (") < text.index("<h2>Trends") < text.index("<h2>Runs")
    regressions = text[text.index("Regressions ("):text.index("<h2>Trends")]
    assert "dynamic_int8-cpu-bs1" in regressions and ">step<" in regressions and "95% interval" in regressions
    cards = re.findall(r'<div class="chart( failed)?" id="[^"]*--([^"]*?)--', text)
    assert cards[0] == (" failed", "dynamic_int8-cpu-bs1") and all(not failed for failed, _ in cards[1:])
    assert "step -1" in text  # the marker on the chart, labelled with its size
    commit = f"{11:040x}"[:7]
    assert re.search(rf"<title>run #12 \(2026-11-12 02:23, {commit}\) · cpu-test-[^<]*· 1\.7", text)
    assert "Unchanged in every run" in text and "size_bytes" in text


def test_the_page_is_self_contained(store: Path, tmp_path: Path) -> None:
    text = page_of(store, tmp_path)
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page must not fetch anything"
    assert "<script" not in text and "@import" not in text and "url(" not in text


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.e2e
def test_the_page_renders_in_a_headless_browser(store: Path, tmp_path: Path) -> None:
    exe = browser()
    if exe is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    history("add", "--store", str(store), *nights(tmp_path, 1, slow_from=10, start=10))
    page = tmp_path / "page.html"
    assert history("report", "--store", str(store), "--html", str(page)) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1400,1200", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000  # a blank page is a few kB
    from PIL import Image

    with Image.open(shot) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    red = int(np.count_nonzero((rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)))
    assert red > 200, "the failing series' red frame, point and banner are drawn"


@pytest.mark.e2e
def test_the_workflows_pass_the_security_audit() -> None:
    zizmor = shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install zizmor, the dev extra)")
    result = subprocess.run([zizmor, "--offline", str(REPO / ".github" / "workflows")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
