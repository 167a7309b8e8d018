"""A project's [tool.resnet-gate] table: found from any folder of the project, every value checked in one line that
names the file and the key, paths made absolute from the pyproject's folder, and its place in `run`'s precedence:
a flag beats the table, the table beats the built-in default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import project_config
from harness.__main__ import check_run, main, with_project_defaults
from harness.errors import ProjectConfigError
from harness.project_config import find_pyproject, load, options_for
from harness.project_keys import KEYS

ROOT = Path(__file__).resolve().parent.parent


def write_table(folder: Path, table: str) -> Path:
    """Write `folder`/pyproject.toml with a [project] and the [tool.resnet-gate] lines `table`; return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(f'[project]\nname = "p"\nversion = "0"\n\n[tool.resnet-gate]\n{table}\n', encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder that is its repository's top (.git), so no search climbs out of the test's folder."""
    folder = tmp_path / "project"
    (folder / ".git").mkdir(parents=True)
    return folder


def test_found_from_a_subfolder_and_paths_are_from_the_pyprojects_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "images" / "cat").mkdir(parents=True)
    (project / "gate").mkdir()
    (project / "gate" / "thresholds.json").write_text("{}", encoding="utf-8")
    (project / "ckpt.pth").write_bytes(b"")
    path = write_table(project, '\n'.join([
        'model = "tiny_project.models:small_cnn"', 'weights = "ckpt.pth"', 'data = "folder:images"',
        'thresholds = "gate/thresholds.json"', 'baselines = "gate/baselines"',
    ]))
    deep = project / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    config = load()
    assert config.pyproject == path.resolve() and config.folder == project.resolve()
    assert config.values == {
        "model": "tiny_project.models:small_cnn",
        "weights": str(project.resolve() / "ckpt.pth"),
        "data": f"folder:{project.resolve() / 'images'}",
        "thresholds": project.resolve() / "gate" / "thresholds.json",
        "baselines": project.resolve() / "gate" / "baselines",
    }


def test_the_nearest_pyproject_wins_even_without_the_table(project: Path) -> None:
    write_table(project, 'model = "resnet50"')
    inner = project / "packages" / "inner"
    inner.mkdir(parents=True)
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n', encoding="utf-8")
    config = load(inner)
    assert config.pyproject == (inner / "pyproject.toml").resolve()
    assert config.values == {} and config.defaults_for("run") == {} and config.describe("run") == ""


def test_the_search_stops_at_the_repositorys_top(tmp_path: Path) -> None:
    write_table(tmp_path / "outer", 'model = "resnet50"')
    repo = tmp_path / "outer" / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()
    assert find_pyproject(repo / "src") is None
    assert load(repo / "src") == project_config.ProjectConfig()


def test_both_spellings_of_a_list_give_the_same_values(project: Path) -> None:
    write_table(project, 'variants = ["fp32", "dynamic_int8"]\nbatch-sizes = [1, 32, 1]\nbudget = 2')
    as_lists = load(project).values
    write_table(project, 'variants = "fp32,dynamic_int8"\nbatch-sizes = "1,32"\nbudget = 2.0')
    assert as_lists == load(project).values == {"variants": "fp32,dynamic_int8", "batch-sizes": [1, 32], "budget": 2.0}


def test_each_command_gets_only_its_keys_under_its_dests(project: Path) -> None:
    write_table(project, '\n'.join([
        'model = "resnet50"', 'variants = "fp32,prune_structured"', 'batch-sizes = [1, 8]', 'seed = 3',
        'options = ["prune_structured.ratio=0.5"]', 'baselines = "b"',
    ]))
    config = load(project)
    assert config.defaults_for("run") == {
        "model": "resnet50", "variants": "fp32,prune_structured", "batch_sizes": [1, 8], "seed": 3,
        "project_options": {"prune_structured.ratio": 0.5},
    }
    assert config.defaults_for("gate") == {
        "model": "resnet50", "bench_variants": "fp32,prune_structured", "bench_batch_sizes": [1, 8],
        "baselines_dir": project.resolve() / "b",
    }
    assert config.defaults_for("ab") == {
        "model": "resnet50", "variants": "fp32,prune_structured", "batch_sizes": [1, 8], "seed": 3,
        "project_options": {"prune_structured.ratio": 0.5},
    }
    assert config.defaults_for("bisect") == {  # the case names the variant and batch size
        "model": "resnet50", "seed": 3, "project_options": {"prune_structured.ratio": 0.5},
    }
    assert config.defaults_for("baseline write") == {"baselines_dir": project.resolve() / "b"}  # model: the runs'
    assert config.defaults_for("baseline show") == {"model": "resnet50", "baselines_dir": project.resolve() / "b"}
    with pytest.raises(ValueError, match="add its line to COMMANDS"):
        config.defaults_for("nonesuch")


BAD_TABLES = [
    ('modle = "resnet18"', ": unknown key 'modle' (did you mean model?); known keys: model, weights, data"),
    ("batch_sizes = [1]", ": unknown key 'batch_sizes' (did you mean batch-sizes"),
    ('model = "my model"', " model: --model 'my model' is not a model spec: write resnet18"),
    ("model = 18", " model: must be a non-empty string, got 18 (integer)"),
    ('weights = "missing.pth"', " weights: the checkpoint {folder}/missing.pth does not exist"),
    ('data = "mnist"', " data: unknown data spec 'mnist'; valid specs: digits, imagenet:PATH, folder:PATH"),
    ('data = "folder:no/such"', " data: data folder {folder}/no/such does not exist"),
    ('variants = "fp32,int3"', " variants: unknown technique 'int3': choose from fp32"),
    ("variants = [1, 2]", ' variants: must be a "fp32,dynamic_int8" string or a list of variant names, got [1, 2]'),
    ("batch-sizes = [1, 0]", ' batch-sizes: must be a list of positive integers, e.g. [1, 32], or a "1,32" string, '
                             "got [1, 0] (array)"),
    ("batch-sizes = [1.5]", " batch-sizes: must be a list of positive integers"),
    ("batch-sizes = [true]", " batch-sizes: must be a list of positive integers, e.g. [1, 32], or a \"1,32\" string, "
                             "got [true] (array)"),
    ("batch-sizes = 32", " batch-sizes: must be a list of positive integers, e.g. [1, 32], or a \"1,32\" string, "
                         "got 32 (integer)"),
    ('batch-sizes = "1,x"', ' batch-sizes: must be a list of positive integers, e.g. [1, 32], or a "1,32" string, '
                            'got "1,x" (string)'),
    ('device = "gpu"', " device: unknown device 'gpu': use cpu, cuda, cuda:N (run, ab, bisect), all (gate only) "
                       "or auto"),
    ("eval-count = 0", " eval-count: must be an integer from 1 to 1000000000, e.g. 500, got 0 (integer)"),
    ('eval-count = "500"', ' eval-count: must be an integer from 1 to 1000000000, e.g. 500, got "500" (string)'),
    ("seed = -1", " seed: must be an integer from 0 to 4294967295, e.g. 0, got -1 (integer)"),
    ("seed = true", " seed: must be an integer from 0 to 4294967295, e.g. 0, got true (boolean)"),
    ("budget = nan", " budget: must be a number of seconds from 0 to 3600, e.g. 4, got NaN (float)"),
    ('budget = "4"', ' budget: must be a number of seconds from 0 to 3600, e.g. 4, got "4" (string)'),
    ('options = "prune_structured.ratio=0.5"', ' options: must be a list of "technique.name=value" strings'),
    ('options = ["prune_structured.ratio=5"]', " options: --option prune_structured.ratio must be a number in (0, 1)"),
    ('options = ["ratio=0.5"]', " options: --option takes technique.name=value"),
    ('variants = "fp32"\noptions = ["prune_structured.ratio=0.5"]',
     " options: prune_structured.ratio is an option of prune_structured, which no variant in `variants` uses"),
    ('thresholds = "gate.json"', " thresholds: the thresholds file {folder}/gate.json does not exist"),
    ('baselines = "pyproject.toml"', " baselines: {folder}/pyproject.toml is a file; give the folder"),
]


@pytest.mark.parametrize(("table", "message"), BAD_TABLES, ids=[table for table, _ in BAD_TABLES])
def test_a_bad_value_is_one_line_naming_the_file_and_the_key(
    project: Path, monkeypatch: pytest.MonkeyPatch, table: str, message: str
) -> None:
    write_table(project, table)
    monkeypatch.chdir(project)
    with pytest.raises(ProjectConfigError) as raised:
        load()
    text = str(raised.value)
    assert "\n" not in text
    expected = "pyproject.toml [tool.resnet-gate]" + message.format(folder=project.resolve())
    assert text.startswith(expected), f"{text!r}\ndoes not start with\n{expected!r}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[tool.resnet-gate]\nmodel = \n", "pyproject.toml: is not valid TOML: Invalid value (at line 2, column 9)"),
        (b"[tool.resnet-gate\n", "pyproject.toml: is not valid TOML: "),
        (b"\xff\xfe[tool]", "pyproject.toml: is not UTF-8 text, so not TOML; save it as UTF-8"),
        (b"tool = 3\n", "pyproject.toml: `tool` must be a table, got integer"),
        (b'tool.resnet-gate = "resnet50"\n', "pyproject.toml: tool.resnet-gate must be a table ([tool.resnet-gate] "
                                             "with one key per line), got string"),
    ],
    ids=["broken-value", "broken-header", "not-utf8", "tool-not-a-table", "table-not-a-table"],
)
def test_a_broken_pyproject_is_one_line_naming_it(
    project: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    (project / "pyproject.toml").write_bytes(content)
    monkeypatch.chdir(project)
    with pytest.raises(ProjectConfigError) as raised:
        load()
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_every_key_has_a_meaning_and_reaches_some_command() -> None:
    read = {key for keys in project_config.COMMANDS.values() for key in keys}
    assert set(KEYS) == read, "a key no command reads is a setting that does nothing"
    assert all(key.meaning for key in KEYS.values())


def test_options_apply_only_to_the_techniques_a_run_uses() -> None:
    configured = {"prune_structured.ratio": 0.5, "prune_unstructured.amount": 0.2}
    assert options_for(["fp32", "prune_structured+dynamic_int8"], configured) == {"prune_structured.ratio": 0.5}
    assert options_for(["fp32"], configured) == {}


@pytest.fixture
def run_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose table sets some of run's keys, as the current folder."""
    write_table(project, '\n'.join([
        'variants = "fp32,prune_structured"', 'batch-sizes = [1, 8]', 'device = "cpu"',
        'options = ["prune_structured.ratio=0.5"]',
    ]))
    monkeypatch.chdir(project)
    return project


def test_run_a_flag_beats_the_table_and_the_table_beats_the_default(
    run_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = with_project_defaults("run", ["run", "--batch-sizes", "4"])
    assert args.variants == "fp32,prune_structured"  # from the table
    assert args.batch_sizes == [4]  # the flag
    assert args.device == "cpu" and args.budget == 4.0 and args.seed == 0  # the table, then the built-in defaults
    assert capsys.readouterr().err == (
        "run: defaults from pyproject.toml [tool.resnet-gate]: variants=fp32,prune_structured, batch-sizes=1,8, "
        "device=cpu, options=prune_structured.ratio=0.5\n"
    )


def test_ab_takes_the_table_and_a_flag_still_wins(run_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.ab.cli import settings_of

    args = with_project_defaults("ab", ["ab", "main", "--batch-sizes", "4", "--threads", "1"])
    assert capsys.readouterr().err.startswith("ab: defaults from pyproject.toml [tool.resnet-gate]: variants=")
    settings = settings_of(args, args.variants, args.batch_sizes)
    assert settings.variants == ("fp32", "prune_structured") and settings.batch_sizes == (4,)
    assert settings.device == "cpu" and dict(settings.options) == {"prune_structured.ratio": 0.5}
    args = with_project_defaults("ab", ["ab", "main", "--option", "prune_structured.ratio=0.25", "--threads", "1"])
    settings = settings_of(args, args.variants, args.batch_sizes)
    assert settings.batch_sizes == (1, 8) and dict(settings.options) == {"prune_structured.ratio": 0.25}


def test_run_an_option_flag_beats_the_same_option_in_the_table(run_project: Path) -> None:
    args = with_project_defaults("run", ["run", "--option", "prune_structured.ratio=0.25", "--threads", "1"])
    assert check_run(args).options == {"prune_structured.ratio": 0.25}
    args = with_project_defaults("run", ["run", "--threads", "1"])
    assert check_run(args).options == {"prune_structured.ratio": 0.5}
    args = with_project_defaults("run", ["run", "--variants", "fp32", "--threads", "1"])
    assert check_run(args).options == {}  # the table's options are for prune_structured, which this run lacks


def test_run_without_a_table_keeps_the_built_in_defaults(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (project / "pyproject.toml").write_text('[project]\nname = "p"\n', encoding="utf-8")
    monkeypatch.chdir(project)
    args = with_project_defaults("run", ["run"])
    assert (args.variants, args.batch_sizes, args.device, args.model) == ("fp32", [1, 32], "auto", "resnet18")
    assert args.project_options == {} and capsys.readouterr().err == ""


def test_baseline_show_finds_the_baseline_the_gate_judges_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the example project, plain `baseline show` shows its model's baseline in its table's folder; a flag wins."""
    project = tmp_path / "tiny_project"
    ignore = shutil.ignore_patterns("__pycache__", "results", ".nox")
    shutil.copytree(ROOT / "examples" / "tiny_project", project, ignore=ignore)
    (project / ".git").mkdir()
    (committed,) = (project / "baselines").glob("*+tiny_project.models_small_cnn.json")
    env_key = committed.name.partition("+")[0]
    monkeypatch.chdir(project)
    assert main(["baseline", "show", "--env-key", env_key]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("baseline show: defaults from pyproject.toml [tool.resnet-gate]: "
                          "model=tiny_project.models:small_cnn, baselines=")
    assert out.startswith(f"{project.resolve() / 'baselines' / committed.name}: 6 cases") and "fp32-cpu-bs1" in out
    assert main(["baseline", "show", "--env-key", env_key, "--model", "resnet18"]) == 2  # the flag beats the table
    assert f"error: no baseline {env_key}.json in {project.resolve() / 'baselines'}" in capsys.readouterr().err
    args = with_project_defaults("baseline write", ["baseline", "write", "run.json"])
    assert args.baselines_dir == project.resolve() / "baselines"  # where the gate's runs are recorded
    args = with_project_defaults("baseline write", ["baseline", "write", "run.json", "--baselines-dir", "elsewhere"])
    assert args.baselines_dir == Path("elsewhere")


def test_run_with_a_bad_table_exits_2_with_its_line(project: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_table(project, "batch-sizes = [0]")
    monkeypatch.chdir(project)
    assert main(["run", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        'error: pyproject.toml [tool.resnet-gate] batch-sizes: must be a list of positive integers, e.g. [1, 32], '
        'or a "1,32" string, got [0] (array)\n'
    )


@pytest.mark.parametrize("command", ["run", "gate"])
@pytest.mark.e2e
def test_a_bad_table_stops_the_command_line_with_exit_2_and_one_line(project: Path, command: str) -> None:
    """As a user types it, in the project's folder: no traceback, nothing run, nothing written."""
    write_table(project, 'modle = "resnet18"')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "harness", command], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: pyproject.toml [tool.resnet-gate]: unknown key 'modle' (did you mean model?); known keys: model, "
        "weights, data, variants, batch-sizes, device, eval-count, seed, budget, options, thresholds, baselines, "
        "unjudged"
    ]
    assert sorted(p.name for p in project.iterdir()) == [".git", "pyproject.toml"]
