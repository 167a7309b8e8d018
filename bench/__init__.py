"""The regression gate: one pytest case per registered variant x device x batch size (see conftest.py)."""
