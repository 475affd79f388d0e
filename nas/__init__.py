"""nas: training-aware neural architecture search, compound scaling and progressive learning."""

__version__ = "0.1.0"
