"""Metaplasticity observatory: σ traces (HDF5), Hessian diagonals, importance comparisons, plots."""
from .recorder import SigmaRecorder
from .trace import read_trace

__all__ = ["SigmaRecorder", "read_trace"]
