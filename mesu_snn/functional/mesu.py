"""The MESU update (Bonnet et al., arXiv 2312.10153 / 2504.13569) as one pure function.

For every synapse, with C the negative log-likelihood summed over the mini-batch and
averaged over the Monte-Carlo weight samples w = μ + σ·ε, and N the memory window
(in samples):

    Δμ = −lr_μ · σ² · ∂C/∂μ  +  σ² (μ_prior − μ) / (N σ_prior²)
    Δσ = −lr_σ · (σ²/2) · ∂C/∂σ  +  σ (σ_prior² − σ²) / (2 N σ_prior²)

Both right-hand sides use the σ from before the step. With locally constant curvature h
the fixed point is 1/σ² = N·h + 1/σ_prior², so the μ step is a damped diagonal Newton step.

Gradient clamp (``clamp_grad = c``, as in the authors' code): each gradient is clipped to
±c/σ before the update. Then the likelihood part of Δσ is at least −lr_σ·c·σ/2, so for
lr_σ·c < 2 and σ ≤ σ_prior·√(1 + 2N(1 − lr_σ·c/2)) the new σ stays positive; without it a
large summed-batch gradient drives σ below zero.
"""
from __future__ import annotations

from typing import Union

import torch

Scalar = Union[float, torch.Tensor]

__all__ = ["mesu_update", "clamp_to_sigma"]


def clamp_to_sigma(grad: torch.Tensor, sigma: torch.Tensor, c: float | None) -> torch.Tensor:
    """Clip ``grad`` elementwise to ±c/σ (no clipping if c is None)."""
    if c is None:
        return grad
    bound = c / sigma
    return torch.minimum(torch.maximum(grad, -bound), bound)


def mesu_update(mu: torch.Tensor, sigma: torch.Tensor, grad_mu: torch.Tensor, grad_sigma: torch.Tensor,
                *, memory: float, sigma_prior: Scalar, mu_prior: Scalar = 0.0,
                lr_mu: float = 1.0, lr_sigma: float = 1.0,
                clamp_grad: float | None = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One MESU step. All tensors share one shape; returns new (μ, σ), inputs untouched.

    memory: N, the memory window in samples. sigma_prior, mu_prior: the prior N(μ_prior, σ_prior²).
    """
    gm = clamp_to_sigma(grad_mu, sigma, clamp_grad)
    gs = clamp_to_sigma(grad_sigma, sigma, clamp_grad)
    var = sigma * sigma
    prior_var = sigma_prior * sigma_prior
    new_mu = mu - lr_mu * var * gm + var * (mu_prior - mu) / (memory * prior_var)
    new_sigma = sigma - lr_sigma * 0.5 * var * gs + sigma * (prior_var - var) / (2.0 * memory * prior_var)
    return new_mu, new_sigma
