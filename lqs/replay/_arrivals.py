"""The arrival processes live in lqs/_arrivals.py (the long-run engine uses them too)."""

from .._arrivals import KINDS, Arrivals

__all__ = ["KINDS", "Arrivals"]
