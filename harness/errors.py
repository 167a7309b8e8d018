"""Exceptions for user errors: each message says what was wrong and how to fix it."""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can fix; the CLI prints the message without a traceback."""


class DataError(HarnessError, ValueError):
    """A data spec, path, layout or image that cannot be used."""


class WeightsError(HarnessError):
    """Model weights that are missing, corrupt or do not fit the model."""


class ResultsError(HarnessError):
    """A results or baseline file that cannot be read or written."""


class TechniqueError(HarnessError):
    """An unknown technique or variant, or a technique that cannot run here."""


class ModelError(WeightsError):
    """A model spec that names no model the harness can build (a WeightsError, as an unknown arch was before)."""


class ProjectConfigError(HarnessError):
    """A project's [tool.resnet-gate] table, or the pyproject.toml that holds it, that cannot be used."""
