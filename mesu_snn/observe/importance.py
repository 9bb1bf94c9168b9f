"""Synaptic importance measures, and how well each matches the Hessian diagonal.

* MESU: ``(1/σ² − 1/σ_prior²)/N`` — at MESU's fixed point 1/σ² ≈ N·H_diag + 1/σ_prior², so
  this estimates the per-sample Hessian diagonal (N = memory window in samples).
* BGD: ``1/σ²`` (no prior term).
* EWC (Kirkpatrick 2017): the empirical Fisher diagonal, the mean over samples of the
  squared per-sample gradient of the log-likelihood, ``F = E[(∂ log p(y|x, μ)/∂μ)²]``, taken
  on the mean network (w = μ) with the true labels (:func:`ewc_fisher_diagonal`).
* SI (Zenke 2017): ``ω = Σ_t −g_t·Δθ_t / (Δ² + ξ)``, the path integral of −gradient × step over
  a task divided by the squared total change Δ plus ξ (:class:`SIPathIntegral`,
  :func:`si_importance`). g is the loss gradient at each step (here w.r.t. μ).

:func:`correlations` gives Pearson and Spearman coefficients between two flattened measures.
All functions work on ``{pair name: tensor}`` dicts as :func:`mesu_snn.bayesian_pairs` names them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..rules.ewc import fisher_diagonal
from ..rules.si import si_importance as _si_importance
from ..synapses import bayesian_pairs, mode_set

__all__ = ["mesu_importance", "bgd_importance", "ewc_fisher_diagonal", "si_importance", "SIPathIntegral",
           "correlations", "compare_importances", "flatten"]


def mesu_importance(sigma: torch.Tensor, sigma_prior: float, memory: float) -> torch.Tensor:
    """(1/σ² − 1/σ_prior²)/N, same shape as σ."""
    if not sigma_prior > 0 or not memory > 0:
        raise ValueError(f"sigma_prior and memory must be > 0, got {sigma_prior!r}, {memory!r}")
    return (sigma.detach().double() ** -2 - sigma_prior ** -2) / memory


def bgd_importance(sigma: torch.Tensor) -> torch.Tensor:
    """1/σ², same shape as σ."""
    return sigma.detach().double() ** -2


def si_importance(path_integral: torch.Tensor, delta: torch.Tensor, xi: float = 1e-3) -> torch.Tensor:
    """ω = path_integral / (Δ² + ξ) in float64 (:func:`mesu_snn.rules.si.si_importance`)."""
    return _si_importance(path_integral.detach().double(), delta.detach().double(), xi)


class SIPathIntegral:
    """Accumulates SI's Σ −g·Δθ over μ of a model. Call :meth:`before_step` after backward and
    before ``optimizer.step()`` (stores g and θ), then :meth:`after_step`; :meth:`importance`
    returns ω per pair relative to the values at construction (the task start)."""

    def __init__(self, model: nn.Module, xi: float = 1e-3):
        self.model, self.xi = model, xi
        self.start = {n: mu.detach().clone() for n, mu, _ in bayesian_pairs(model)}
        self.path = {n: torch.zeros_like(mu, dtype=torch.float64) for n, mu in self.start.items()}
        self._pending = None

    def before_step(self) -> None:
        self._pending = {n: (mu.grad.detach().clone() if mu.grad is not None else torch.zeros_like(mu),
                             mu.detach().clone()) for n, mu, _ in bayesian_pairs(self.model)}

    def after_step(self) -> None:
        if self._pending is None:
            raise RuntimeError("SIPathIntegral: call before_step() before after_step()")
        for n, mu, _ in bayesian_pairs(self.model):
            g, old = self._pending[n]
            self.path[n] += (-g * (mu.detach() - old)).double()
        self._pending = None

    def importance(self) -> dict[str, torch.Tensor]:
        return {n: si_importance(self.path[n], mu.detach() - self.start[n], self.xi)
                for n, mu, _ in bayesian_pairs(self.model)}


def ewc_fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of the mean network: mean over the B samples of the squared
    per-sample gradient of log p(y_b | x_b, μ). x (T, B, ...), y (B,)."""
    pairs = bayesian_pairs(model)
    with mode_set(model, "mean"):
        fisher = fisher_diagonal(model, [mu for _, mu, _ in pairs], [(x, y)], dtype=torch.float64)
    return {n: f for (n, _, _), f in zip(pairs, fisher)}


def flatten(d: dict[str, torch.Tensor], names=None) -> np.ndarray:
    """Concatenate a {name: tensor} dict (in ``names`` order, default sorted) into one 1-d array."""
    names = sorted(d) if names is None else names
    return np.concatenate([d[n].detach().double().reshape(-1).cpu().numpy() for n in names])


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based)."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(1, len(a) + 1)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def correlations(a, b) -> dict[str, float]:
    """{"pearson", "spearman", "n"} between two equally long 1-d arrays (NaN if one is constant)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two arrays of equal length >= 2, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    return {"pearson": _pearson(a, b), "spearman": _pearson(_ranks(a), _ranks(b)), "n": int(a.size)}


def compare_importances(hessian: dict[str, torch.Tensor], measures: dict[str, dict[str, torch.Tensor]],
                        names=None) -> dict[str, dict[str, float]]:
    """Correlations of each importance measure (e.g. {"MESU": {...}, "BGD": {...}}) with the
    Hessian diagonal, over all entries of the pairs in ``names`` (default: the Hessian's)."""
    names = sorted(hessian) if names is None else list(names)
    h = flatten(hessian, names)
    return {k: correlations(flatten(m, names), h) for k, m in measures.items()}
