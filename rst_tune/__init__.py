"""rst-tune: find the cheapest way to train a network with sharpness-aware minimization."""

__version__ = "0.1.0"
