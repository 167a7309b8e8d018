"""Any model under the harness: a factory of the example project trained on digits, a torchvision model through a
technique, a technique that cannot transform a model recorded with its reason, and the gate's --model option."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _gate import StubConfig
from torch import nn

from harness import models, pipeline, techniques
from harness.data import DataBundle, load_data
from harness.errors import ModelError, TechniqueError
from harness.gate.remeasure import Request
from harness.train import TrainConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_project"
FACTORY = "tiny_project.models:small_cnn"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """The built-in data, loaded once for the module (a second each time otherwise)."""
    return load_data("digits")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the example project as the current directory, its package imported fresh and forgotten after."""
    folder = tmp_path / "tiny_project"
    shutil.copytree(EXAMPLE, folder)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != ""])
    yield folder
    for name in [n for n in sys.modules if n.split(".")[0] == "tiny_project"]:
        del sys.modules[name]


@pytest.mark.usefixtures("isolated_cache")
def test_the_example_factory_trains_on_digits_and_an_edit_retrains_it(
    project: Path, digits: DataBundle, isolated_cache: Path
) -> None:
    one_epoch = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    helper = project / "tiny_project" / "widths.py"  # a helper module of the package the factory may import
    helper.write_text("WIDTH = 8\n")
    model, cached = models.train_on_data(FACTORY, digits, device=CPU, recipe=one_epoch, progress=False)
    assert not cached and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    (entry,) = (Path(str(isolated_cache)) / "models").glob("*.pt")
    assert entry.name.startswith("tiny_project.models_small_cnn-digits-")
    _, cached = models.train_on_data(FACTORY, digits, device=CPU, recipe=one_epoch, progress=False)
    assert cached
    source = project / "tiny_project" / "models.py"
    source.write_text(source.read_text() + "\n# an edit: another model, another cache entry\n")
    del sys.modules["tiny_project.models"]
    _, cached = models.train_on_data(FACTORY, digits, device=CPU, recipe=one_epoch, progress=False)
    assert not cached
    helper.write_text("WIDTH = 16  # an edit to a helper: another model, another cache entry\n")
    _, cached = models.train_on_data(FACTORY, digits, device=CPU, recipe=one_epoch, progress=False)
    assert not cached
    assert len(list((Path(str(isolated_cache)) / "models").glob("*.pt"))) == 3


@pytest.mark.usefixtures("isolated_cache")
def test_a_model_with_the_wrong_number_of_outputs_is_refused(
    project: Path, digits: DataBundle
) -> None:
    source = project / "tiny_project" / "models.py"
    source.write_text(source.read_text() + "\n\ndef fixed():\n    return small_cnn(num_classes=7)\n")
    with pytest.raises(ModelError, match=r"returns \(2, 7\) for 2 images but the data has 10 classes"):
        models.train_on_data("tiny_project.models:fixed", digits, device=CPU, progress=False)


def test_a_torchvision_model_builds_for_digits_and_runs_a_technique(digits: DataBundle) -> None:
    model = models.build("mobilenet_v3_small", digits.num_classes)
    models.check_outputs(model, "mobilenet_v3_small", digits.num_classes, digits.image_size)
    ctx = techniques.ApplyContext(device=CPU, data=digits, arch="mobilenet_v3_small")
    state = techniques.get("dynamic_int8").transform(techniques.ModelState.start(model), ctx)
    assert state.coverage_layers["dynamic_int8"] == {"classifier.0", "classifier.3"}
    assert state(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def conv_only(num_classes: int = 10) -> nn.Module:
    """A classifier without any nn.Linear: a 1x1 conv head, as some mobile nets have."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def test_a_technique_that_cannot_transform_the_model_is_recorded_with_its_reason(digits: DataBundle) -> None:
    loaded = models.LoadedModel(conv_only(), "conv_only", "test")
    ctx = techniques.ApplyContext(device=CPU, data=digits, arch="conv_only", progress=False)
    session = pipeline.Session(data=digits, device=CPU, model=loaded, ctx=ctx)
    record = pipeline.run(session, ["dynamic_int8", "prune_unstructured"], [1], budget_s=0.05)
    failed = record.case("dynamic_int8-cpu-bs1")
    assert failed.status == "error" and failed.reason is not None
    assert "no nn.Linear layer" in failed.reason and "runs on a model with an nn.Linear head" in failed.reason
    assert record.case("prune_unstructured-cpu-bs1").status == "ok"  # the rest of the run still runs
    with pytest.raises(TechniqueError, match="no nn.Linear layer .* it runs on a model whose head is an nn.Linear"):
        from harness.techniques.prune_structured import classifier

        classifier(conv_only())


@pytest.mark.parametrize(("spec", "arch"), [("resnet18", "resnet18"), ("torchvision:resnet18", "resnet18"),
                                            ("torchvision:efficientnet_b0", "efficientnet_b0")])
def test_the_gate_takes_model_like_run(spec: str, arch: str) -> None:
    from harness.pytest_gate.plugin import settings_of

    settings = settings_of(StubConfig(model=spec))  # type: ignore[arg-type]
    assert settings.model == arch
    request = Request("fp32", "cpu", 1, "digits", None, 2, 0.1, settings.model)
    assert ("--model" in request.argv(Path("out.json"))) == (arch != "resnet18")  # the default's argv is as before


def test_the_gate_refuses_a_bad_model_in_one_line() -> None:
    from harness.pytest_gate.plugin import settings_of

    with pytest.raises(pytest.UsageError, match="did you mean mobilenet_v3_small"):
        settings_of(StubConfig(model="torchvision:mobilenet_v3_smal"))  # type: ignore[arg-type]
