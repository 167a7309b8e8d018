"""Apply optimization techniques to an image classifier and measure what each really does."""

from __future__ import annotations

__version__ = "0.1.0"
