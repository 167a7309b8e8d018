"""The model specs `--model` accepts: a torchvision classifier (`torchvision:NAME`, or just NAME) or a factory
(`package.module:factory`) of your own.

Parsing is torch-free and cheap, so a command checks its --model before any work and `list` stays fast;
harness/models.py builds what a spec names (and checks a torchvision name against the installed torchvision).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ModelError

DEFAULT_MODEL = "resnet18"
TORCHVISION_PREFIX = "torchvision:"
MODEL_FORMS = "resnet18, resnet50, torchvision:NAME (e.g. torchvision:mobilenet_v3_small) or package.module:factory"
"""The forms of a model spec, for help texts and errors."""
MODEL_KINDS: dict[str, str] = {
    "torchvision:NAME": "any torchvision image classifier (resnet18 and resnet50 also bare; resnet18 is the default): "
    "ImageNet weights from the local hub cache on imagenet data, else trained by the harness on the data",
    "package.module:factory": "your own factory returning an nn.Module, called with num_classes=N when it takes it; "
    "imported from the current directory or PYTHONPATH; --weights PATH for a checkpoint of it",
}
"""Each kind of model spec, with what it means: `python -m harness list` shows them."""
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = re.compile(_IDENTIFIER)
_FACTORY = re.compile(rf"(?P<module>{_IDENTIFIER}(\.{_IDENTIFIER})*):(?P<attr>{_IDENTIFIER})")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model`: `kind` is "torchvision" or "factory"; `arch` is how runs, caches and baselines name it:
    the torchvision function's name (so `torchvision:resnet18` is the `resnet18` of before), or the factory's
    `package.module:factory` text."""

    kind: str
    arch: str

    @property
    def module_name(self) -> str:
        """Return the factory's module (dotted), e.g. "tiny_project.models"."""
        return self.arch.partition(":")[0]

    @property
    def attribute(self) -> str:
        """Return the factory's name in its module, e.g. "small_cnn"."""
        return self.arch.partition(":")[2]


def parse_model(spec: str) -> ModelSpec:
    """Return the ModelSpec of `spec`, its syntax checked (nothing imported); a bad spec raises ModelError."""
    text = spec.strip()
    name = text.removeprefix(TORCHVISION_PREFIX)
    if _NAME.fullmatch(name):
        return ModelSpec("torchvision", name)
    if not text.startswith(TORCHVISION_PREFIX) and _FACTORY.fullmatch(text):
        return ModelSpec("factory", text)
    raise ModelError(f"--model {spec!r} is not a model spec: write {MODEL_FORMS}")


def close_matches(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean a, b?)" for the choices close to `name`, or "" when none is."""
    found = difflib.get_close_matches(name, list(choices), n=4, cutoff=0.6)
    return f" (did you mean {', '.join(found)}?)" if found else ""


def resolve_factory(spec: ModelSpec) -> Callable[..., Any]:
    """Return the callable a factory spec names, imported with the current directory first on sys.path (as
    `python -m` has it), so a project's own package is found from its folder; PYTHONPATH works too."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    fix = "run from the folder that holds the package, or add that folder to PYTHONPATH"
    try:
        module = importlib.import_module(spec.module_name)
    except ModuleNotFoundError as err:
        missing = err.name or spec.module_name
        raise ModelError(f"--model {spec.arch}: module {missing!r} is not importable: {fix}") from err
    except Exception as err:  # the user's module may raise anything while it imports
        raise ModelError(
            f"--model {spec.arch}: importing {spec.module_name} failed ({type(err).__name__}: {err}); fix that module"
        ) from err
    factory = getattr(module, spec.attribute, None)
    if factory is None:
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelError(
            f"--model {spec.arch}: {spec.module_name} has no {spec.attribute!r}{close_matches(spec.attribute, public)}"
        )
    if not callable(factory):
        raise ModelError(f"--model {spec.arch}: {spec.attribute} is a {type(factory).__name__}, not a callable factory")
    return factory


SKIPPED_FOLDERS = frozenset({
    ".git", ".hg", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__", "site-packages", "build", "dist",
    ".mypy_cache", ".pytest_cache", ".ruff_cache",
})
"""Folders never part of a project's model code (environments, caches, build output)."""


def factory_sources(factory: Callable[..., Any]) -> list[Path]:
    """Return the source files the model a factory builds may depend on: every .py file of the top-level package
    that defines it (an edit to a helper module it imports is an edit of the model), or, for a module outside any
    package, the .py files beside it and those of the packages in its folder. Empty when nothing is on disk."""
    code = getattr(factory, "__code__", None) or getattr(getattr(factory, "__init__", None), "__code__", None)
    module_name = getattr(factory, "__module__", "") or ""
    module = sys.modules.get(module_name)
    filename = code.co_filename if code is not None else getattr(module, "__file__", None)
    if not filename or not Path(filename).is_file():
        return []
    top = sys.modules.get(module_name.split(".", 1)[0])
    top_file = getattr(top, "__file__", None)
    if top is not None and top_file and Path(top_file).name == "__init__.py":
        return sorted(_python_files(Path(top_file).parent))
    folder = Path(filename).parent
    found = [p for p in folder.glob("*.py") if p.is_file()]
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name not in SKIPPED_FOLDERS and (child / "__init__.py").is_file():
            found += _python_files(child)
    return sorted(set(found))


def _python_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.rglob("*.py"):
        if path.is_file() and not SKIPPED_FOLDERS.intersection(path.relative_to(folder).parts):
            found.append(path)
    return found


def factory_source_sha256(factory: Callable[..., Any]) -> str:
    """Return a short hash of the factory's code (factory_sources: its package, names and contents): a cache key
    part, so a model whose code changed, in the factory's file or in a helper it imports, is trained again."""
    sources = factory_sources(factory)
    if not sources:
        return "unknown"
    root = Path(os.path.commonpath([str(p.parent) for p in sources]))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
