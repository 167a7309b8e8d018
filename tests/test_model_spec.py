"""Tests of harness.model_spec and the preflight of --model: good and bad specs, before any work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ModelError, WeightsError
from harness.model_spec import ModelSpec, parse_model, resolve_factory

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_project"


@pytest.fixture
def fresh_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what resolving a factory adds to sys.path and sys.modules, so no test sees another's modules."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != ""])
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("tiny_project", "mymodels", "strmodels"):
            del sys.modules[name]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("resnet18", ModelSpec("torchvision", "resnet18")),
        ("torchvision:resnet18", ModelSpec("torchvision", "resnet18")),
        ("torchvision:mobilenet_v3_small", ModelSpec("torchvision", "mobilenet_v3_small")),
        ("tiny_project.models:small_cnn", ModelSpec("factory", "tiny_project.models:small_cnn")),
        ("models:build", ModelSpec("factory", "models:build")),
    ],
)
def test_good_specs_parse_to_their_kind_and_arch(spec: str, parsed: ModelSpec) -> None:
    assert parse_model(spec) == parsed


@pytest.mark.parametrize("spec", ["", "torchvision:", "torchvision:a.b", "a:b:c", "pkg.mod:", "x y", "pkg..mod:f"])
def test_bad_specs_name_the_forms(spec: str) -> None:
    with pytest.raises(ModelError, match=r"torchvision:NAME .* package.module:factory"):
        parse_model(spec)


def test_parsing_imports_no_torch() -> None:
    code = "import sys, harness.model_spec as m; m.parse_model('torchvision:vgg11'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_torchvision_name_lists_close_matches() -> None:
    from harness import models

    with pytest.raises(ModelError, match=r"did you mean .*mobilenet_v3_small") as err:
        models.check_model("torchvision:mobilenet_v3_smal")
    assert isinstance(err.value, WeightsError)


@pytest.mark.usefixtures("fresh_imports")
def test_factory_must_import_and_be_callable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="'no_such_pkg' is not importable: run from the folder"):
        resolve_factory(parse_model("no_such_pkg.models:f"))
    (tmp_path / "mymodels.py").write_text("VALUE = 3\ndef small_cnn():\n    return 'not a module'\n")
    with pytest.raises(ModelError, match="has no 'small_cn' .*did you mean small_cnn"):
        resolve_factory(parse_model("mymodels:small_cn"))
    with pytest.raises(ModelError, match="VALUE is a int, not a callable"):
        resolve_factory(parse_model("mymodels:VALUE"))


@pytest.mark.usefixtures("fresh_imports")
def test_a_factory_that_returns_no_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import models

    monkeypatch.chdir(tmp_path)
    (tmp_path / "strmodels.py").write_text("def small_cnn():\n    return 'not a module'\n")
    with pytest.raises(ModelError, match=r"returned a str, not a torch.nn.Module"):
        models.check_model("strmodels:small_cnn")


def test_run_refuses_a_bad_model_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from harness.__main__ import main

    out = tmp_path / "run.json"
    assert main(["run", "--model", "torchvision:resnet81", "--out", str(out)]) == 2
    assert "did you mean resnet18" in capsys.readouterr().err
    assert main(["run", "--model", "a:b:c", "--out", str(out)]) == 2
    assert "package.module:factory" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("fresh_imports")
def test_the_example_factory_resolves_from_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLE)
    assert resolve_factory(parse_model("tiny_project.models:small_cnn")).__name__ == "small_cnn"


def test_imagenet_weights_of_any_torchvision_model_are_looked_up_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from harness import models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    wanted = r"for mobilenet_v3_small .*mobilenet_v3_small-\w+\.pth .* in .*hub/checkpoints"
    with pytest.raises(WeightsError, match=wanted):
        models.hub_weights_path("torchvision:mobilenet_v3_small")
    with pytest.raises(WeightsError, match="your own factory: it has no torchvision ImageNet weights; pass --weights"):
        models.hub_weights_path("tiny_project.models:small_cnn")


def test_the_cache_key_covers_every_module_of_the_factorys_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit to a helper module the factory imports is an edit of the model: the cached weights must not be reused
    (in `ab`, head would silently reuse the weights base trained). Files outside the package do not count."""
    from harness.model_spec import factory_source_sha256, factory_sources, parse_model, resolve_factory

    package = tmp_path / "helpproj"
    (package / "layers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "layers" / "__init__.py").write_text("")
    (package / "layers" / "blocks.py").write_text("WIDTH = 8\n")
    (package / "model.py").write_text("from helpproj.layers.blocks import WIDTH\n\ndef make():\n    return WIDTH\n")
    (tmp_path / "notes.py").write_text("# not the model\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = resolve_factory(parse_model("helpproj.model:make"))
    assert {p.name for p in factory_sources(factory)} == {"__init__.py", "blocks.py", "model.py"}
    before = factory_source_sha256(factory)
    (package / "layers" / "blocks.py").write_text("WIDTH = 16\n")
    assert factory_source_sha256(factory) != before
    (tmp_path / "notes.py").write_text("# still not the model\n")
    after = factory_source_sha256(factory)
    (package / "layers" / "blocks.py").write_text("WIDTH = 8\n")
    assert factory_source_sha256(factory) == before != after  # the same code is the same key, wherever it is


def test_a_top_level_module_keys_on_its_folders_modules_and_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.model_spec import factory_sources, parse_model, resolve_factory

    (tmp_path / "flatmodel.py").write_text("import flathelp\n\ndef make():\n    return flathelp.X\n")
    (tmp_path / "flathelp.py").write_text("X = 1\n")
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "big.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = resolve_factory(parse_model("flatmodel:make"))
    assert {p.name for p in factory_sources(factory)} == {"flatmodel.py", "flathelp.py"}
