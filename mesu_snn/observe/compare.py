"""The comparison at the heart of the paper: how well does each rule's synaptic importance
match the Hessian diagonal of the loss at the trained means?

:func:`importance_report` computes diag H (exact for ≤ ``exact_limit`` entries, else
Hutchinson), the rule's own importance from σ — MESU ``(1/σ² − 1/σ_prior²)/N`` or BGD ``1/σ²`` —
the EWC Fisher diagonal at the same μ, and optionally SI's ω (accumulated by the caller with
:class:`~mesu_snn.observe.importance.SIPathIntegral`), with Pearson and Spearman correlations.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..synapses import bayesian_pairs
from .hessian import hessian_diagonal, hutchinson_diagonal
from .importance import (bgd_importance, compare_importances, ewc_fisher_diagonal, flatten, mesu_importance)

__all__ = ["importance_report"]


def importance_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rule: str = "mesu",
                      sigma_prior: float = 0.1, memory: float = 300_000, si: dict | None = None,
                      exact_limit: int = 5_000, n_samples: int = 200, seed: int = 0,
                      weights_only: bool = True) -> dict:
    """{"method", "names", "hessian", "sigma", "measures": {name: flat array},
    "correlations": {name: {"pearson", "spearman", "n"}}} on the batch (x (T, B, ...), y (B,)).

    rule: "mesu" or "bgd" (which σ-based importance to compute). weights_only: leave biases out."""
    if rule not in ("mesu", "bgd"):
        raise ValueError(f"rule must be 'mesu' or 'bgd', got {rule!r}")
    pairs = bayesian_pairs(model)
    names = [n for n, _, _ in pairs if not (weights_only and n.endswith("bias"))]
    total = sum(mu.numel() for _, mu, _ in pairs)
    if total <= exact_limit:
        H, method = hessian_diagonal(model, x, y, max_entries=exact_limit), "exact"
    else:
        H, method = hutchinson_diagonal(model, x, y, n_samples=n_samples, seed=seed), f"hutchinson({n_samples})"
    sig = {n: s.detach() for n, _, s in pairs}
    measures = {}
    if rule == "mesu":
        measures["MESU (1/σ² − 1/σp²)/N"] = {n: mesu_importance(s, sigma_prior, memory) for n, s in sig.items()}
    else:
        measures["BGD 1/σ²"] = {n: bgd_importance(s) for n, s in sig.items()}
    measures["EWC Fisher"] = ewc_fisher_diagonal(model, x, y)
    if si is not None:
        measures["SI ω"] = si
    return {"method": method, "names": names, "hessian": flatten(H, names),
            "sigma": flatten(sig, names), "measures": {k: flatten(v, names) for k, v in measures.items()},
            "correlations": compare_importances(H, measures, names)}
