"""This repository's gate loads the packaged pytest plugin, so `python -m pytest bench` runs what
`python -m harness gate` runs in any project (harness/pytest_gate/)."""

pytest_plugins = ["harness.pytest_gate.plugin"]
