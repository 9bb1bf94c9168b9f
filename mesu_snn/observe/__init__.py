"""Metaplasticity observatory: σ traces (HDF5), Hessian diagonals, importance comparisons, plots.

* :class:`SigmaRecorder` (a training callback) and :func:`read_trace`; the file layout is
  documented once, in :mod:`mesu_snn.observe.schema`.
* :func:`hessian_diagonal` (exact) and :func:`hutchinson_diagonal` of the surrogate-gradient loss.
* :func:`importance_report`: MESU/BGD importance, EWC Fisher and SI ω against diag H (Pearson,
  Spearman); the pure measures live in :mod:`mesu_snn.observe.importance`.
* :mod:`mesu_snn.observe.plots`: the figures (imported on demand: it loads matplotlib).
"""
from .compare import importance_report
from .hessian import hessian_diagonal, hutchinson_diagonal, surrogate_loss
from .importance import (SIPathIntegral, bgd_importance, correlations, ewc_fisher_diagonal, mesu_importance,
                         si_importance)
from .recorder import SigmaRecorder
from .trace import read_trace

__all__ = ["SigmaRecorder", "read_trace", "hessian_diagonal", "hutchinson_diagonal", "surrogate_loss",
           "importance_report", "mesu_importance", "bgd_importance", "ewc_fisher_diagonal", "si_importance",
           "SIPathIntegral", "correlations"]
