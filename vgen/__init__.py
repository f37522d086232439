"""vgen: language-driven visual generation, as an engine with no UI dependency."""

__version__ = "0.1.0"
