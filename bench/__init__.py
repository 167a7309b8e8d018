"""The regression gate of this repository: the packaged suite (harness/pytest_gate/), collected here."""
