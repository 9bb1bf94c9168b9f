"""The BGD update (Zeno et al. 2018, "Task agnostic continual learning using online
variational Bayes") as one pure function.

With C the loss averaged over Monte-Carlo samples (so ∂C/∂μ = E[g], ∂C/∂σ = E[g·ε]):

    μ ← μ − lr · σ² · ∂C/∂μ
    σ ← σ · √(1 + (σ · ∂C/∂σ / 2)²) − σ² · ∂C/∂σ / 2

There is no prior term: σ can only shrink on average, which is BGD's vanishing plasticity.
The new σ is always positive (σ√(1+a²) − σa > 0).
"""
from __future__ import annotations

import torch

__all__ = ["bgd_update"]


def bgd_update(mu: torch.Tensor, sigma: torch.Tensor, grad_mu: torch.Tensor, grad_sigma: torch.Tensor,
               *, lr: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One BGD step; returns new (μ, σ), inputs untouched."""
    var = sigma * sigma
    half = sigma * grad_sigma / 2.0
    new_mu = mu - lr * var * grad_mu
    new_sigma = sigma * torch.sqrt(1.0 + half * half) - sigma * half
    return new_mu, new_sigma
