"""The MESU update (Bonnet et al., arXiv 2312.10153 / 2504.13569) as one pure function.

For every synapse, with C the negative log-likelihood summed over the B samples of the
mini-batch and averaged over the Monte-Carlo weight samples w = μ + σ·ε, and N the memory
window **in samples**:

    Δμ = −lr_μ · σ² · ∂C/∂μ  +  (B/N) · σ² (μ_prior − μ) / σ_prior²
    Δσ = −lr_σ · (σ²/2) · ∂C/∂σ  +  (B/N) · σ (σ_prior² − σ²) / (2 σ_prior²)

Both right-hand sides use the σ from before the step. With locally constant curvature h
per sample (so B·h for the summed loss) the fixed point is 1/σ² = N·h + 1/σ_prior² for
every batch size B, so the μ step is a damped diagonal Newton step and N counts samples.
At B = 1 this is the paper's equation; the authors' code writes the prior term with
1/N and calls N a "number of batches" (its N at batch B is our N/B).

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
                *, memory: Scalar, sigma_prior: Scalar, mu_prior: Scalar = 0.0,
                lr_mu: float = 1.0, lr_sigma: float = 1.0,
                clamp_grad: float | None = 0.5, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One MESU step. All tensors share one shape; returns new (μ, σ), inputs untouched.

    memory: N, the memory window in samples. batch_size: B, the number of samples the summed
    loss C of this step covers (the prior terms are scaled by B/N). sigma_prior, mu_prior:
    the prior N(μ_prior, σ_prior²).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (samples in the summed loss), got {batch_size!r}")
    gm = clamp_to_sigma(grad_mu, sigma, clamp_grad)
    gs = clamp_to_sigma(grad_sigma, sigma, clamp_grad)
    var = sigma * sigma
    prior_var = sigma_prior * sigma_prior
    per_update = memory / batch_size      # the window in updates of B samples
    new_mu = mu - lr_mu * var * gm + var * (mu_prior - mu) / (per_update * prior_var)
    new_sigma = sigma - lr_sigma * 0.5 * var * gs + sigma * (prior_var - var) / (2.0 * per_update * prior_var)
    return new_mu, new_sigma
