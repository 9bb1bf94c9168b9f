"""Metaplasticity observatory, the analysis side: Hessian diagonals and importance comparisons.
(The σ traces and figures are run files: :class:`mesu_snn.runs.SigmaRecorder`,
:func:`mesu_snn.runs.read_trace`, :mod:`mesu_snn.runs.plots`; schema in :mod:`mesu_snn.runs.schema`.)

* :func:`hessian_diagonal` (exact) and :func:`hutchinson_diagonal` of the surrogate-gradient loss.
* :func:`importance_report`: MESU/BGD importance, EWC Fisher and SI ω against diag H (Pearson,
  Spearman); the pure measures live in :mod:`mesu_snn.observe.importance`.
"""
from .compare import importance_report
from .hessian import hessian_diagonal, hutchinson_diagonal, surrogate_loss
from .importance import (SIPathIntegral, bgd_importance, correlations, ewc_fisher_diagonal, mesu_importance,
                         si_importance)

__all__ = ["hessian_diagonal", "hutchinson_diagonal", "surrogate_loss",
           "importance_report", "mesu_importance", "bgd_importance", "ewc_fisher_diagonal", "si_importance",
           "SIPathIntegral", "correlations"]
