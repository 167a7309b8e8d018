"""The gate's one test, collected from the package so its ids stay bench/test_gate.py::test_gate[<case id>]."""

from harness.pytest_gate.test_gate import test_gate

__all__ = ["test_gate"]
