"""Parallel Pilot: share compute. A coordinator cuts jobs into tasks that workers pull."""

__version__ = "0.1.0"

__all__ = ["__version__"]
