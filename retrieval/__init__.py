"""Image retrieval with compact learned binary codes."""

__version__ = "0.1.0"
