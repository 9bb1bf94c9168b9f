"""Local reparameterisation across time: the maths of sampling pre-activations instead of weights.

Setting. A Gaussian linear layer w_ji ~ N(μ_ji, σ_ji²) (independent), optional bias b_j ~ N(μ_bj, σ_bj²),
applied to an input that is *given* (not itself random, not differentiated): x of shape (T, B, in),
T "time" steps that share one weight draw, B batch elements. For one batch element b and one output
neuron j the pre-activations a_j(t) = Σ_i w_ji x_i(t) + b_j, t = 1..T, are jointly Gaussian:

    E[a_j(t)]      = Σ_i μ_ji x_i(t) + μ_bj                                   (mean, (T, B, J))
    Cov(a_j(t), a_j(s)) = Σ_i σ_ji² x_i(t) x_i(s) + σ_bj²                     (cov,  (B, J, T, T))

and different neurons j are independent (they use disjoint rows of w). Drawing
a = mean + L z, z ~ N(0, I_T), with any L such that L Lᵀ = Cov, gives exactly this law; M draws need
M·T normals per (b, j) instead of M·in per (j) for the weights.

Gradient of σ (Rao-Blackwellised). Write u_j = a_j − mean_j = A_j ε_j with A_j = Xᵀ diag(σ_j) (T × in)
and ε_j ~ N(0, I_in) the weight noise. The weight-sampling estimator of ∂C/∂σ_ji is
Σ_t g_j(t) x_i(t) ε_ji with g = ∂C/∂a. Given u_j, E[ε_j | u_j] = A_jᵀ Cov_j⁺ u_j, and g depends on ε_j
only through u_j, so

    ∂C/∂σ_ji ≈ σ_ji Σ_{t,s} g_j(t) x_i(t) x_i(s) v_j(s),   v_j = Cov_j⁺ u_j          (T-vector)

is the conditional expectation of the weight-sampling estimator: unbiased for ∂E[C]/∂σ, with no more
variance. ∂C/∂μ_ji = Σ_t g_j(t) x_i(t) is the same formula as for sampled weights. Summed over the M
draws and the batch, with K[b, j, t, s] = Σ_m g[m, t, b, j] v[m, b, j, s] and Z[b, t, s, i] = x_i(t) x_i(s):

    ∂C/∂σ_ji = σ_ji Σ_{b,t,s} K[b, j, t, s] Z[b, t, s, i]     (one (J, B·T·T) @ (B·T·T, in) matmul)
    ∂C/∂σ_bj = σ_bj Σ_{b,t,s} K[b, j, t, s]                   (the bias input is 1 at every t)

Factorisation. :func:`factor_covariance` returns L (L Lᵀ = Cov) and W (W z = Cov⁺ L z): a Cholesky
factor (W = L⁻ᵀ) where Cov is well conditioned, and, for (near-)singular Cov (repeated or silent time
steps, a time-constant input), an eigendecomposition in float64 of the covariance recomputed in
float64, keeping eigen-directions with variance above ``eig_rtol`` × the largest (exactly rank-
deficient directions carry no variance, so dropping them is exact up to float64 rounding).

Across the batch. With one weight draw shared by the batch (the weight estimator) the pre-activations
of two batch elements are correlated; drawing them per element makes them independent. Every
per-example joint law (all neurons, all steps, with the deeper layers' weights) is unchanged, hence so
are E[C] for a loss that is a sum over examples, and the expectation of every gradient estimate; only
the joint law across examples differs (at B = 1 nothing differs).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["preactivation_moments", "pair_products", "factor_covariance", "sigma_grad_from_k"]


def pair_products(x: torch.Tensor) -> torch.Tensor:
    """x (T, B, in) -> Z (B, T, T, in) with Z[b, t, s, i] = x[t, b, i]·x[s, b, i]."""
    xb = x.transpose(0, 1)
    return xb.unsqueeze(2) * xb.unsqueeze(1)


def preactivation_moments(x: torch.Tensor, weight_mu: torch.Tensor, weight_sigma: torch.Tensor,
                          bias_mu: torch.Tensor | None = None, bias_sigma: torch.Tensor | None = None):
    """Exact law of the pre-activations. x (T, B, in); weight_* (J, in); bias_* (J,) or None.

    Returns mean (T, B, J) and cov (B, J, T, T), in x's dtype."""
    if x.dim() != 3 or weight_mu.dim() != 2 or x.shape[-1] != weight_mu.shape[1]:
        raise ValueError(f"preactivation_moments expects x (T, B, in) and weights (J, in), got "
                         f"{tuple(x.shape)}, {tuple(weight_mu.shape)}")
    t, b, n_in = x.shape
    j = weight_mu.shape[0]
    mean = (x.reshape(t * b, n_in) @ weight_mu.t()).reshape(t, b, j)
    z = pair_products(x).reshape(b * t * t, n_in)
    cov = (z @ weight_sigma.square().t()).reshape(b, t, t, j).permute(0, 3, 1, 2)
    if bias_mu is not None:
        mean = mean + bias_mu
        cov = cov + bias_sigma.square()[None, :, None, None]
    return mean, cov


def factor_covariance(cov: torch.Tensor, exact_cov: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      chol_rtol: float = 1e-4, eig_rtol: float = 1e-10):
    """L, W for a batch of PSD matrices cov (..., T, T): L Lᵀ = cov and W (L z) = cov⁺ (L z).

    A matrix goes to the eigen path if its Cholesky fails or a pivot L_kk² falls below
    ``chol_rtol`` × its largest diagonal entry. ``exact_cov(mask)`` (optional) recomputes those
    matrices, ``cov[mask]``, in float64 (rounding in a float32 covariance would otherwise give
    exactly singular directions a spurious variance of ~1e-7 of the largest); eigen-directions
    with eigenvalue ≤ ``eig_rtol`` × the largest (or ≤ 0) are given zero variance. A non-finite
    matrix gives NaN factors (so the caller's outputs and gradients are NaN, which the optimizers'
    non-finite guard reports) instead of an error inside the eigensolver.
    Returns L, W in cov's dtype."""
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"factor_covariance expects (..., T, T) matrices, got {tuple(cov.shape)}")
    c64 = cov.double()
    n = cov.shape[-1]
    chol, info = torch.linalg.cholesky_ex(c64)
    piv = torch.diagonal(chol, dim1=-2, dim2=-1).square().amin(-1)
    scale = torch.diagonal(c64, dim1=-2, dim2=-1).amax(-1)
    bad = (info != 0) | ~(piv > chol_rtol * scale)          # NaN pivots count as bad
    eye = torch.eye(n, dtype=torch.float64, device=cov.device).expand_as(c64)
    if bool(bad.any()):
        chol = torch.where(bad[..., None, None], eye, chol)   # placeholders, replaced below
    w = torch.linalg.solve_triangular(chol.transpose(-1, -2), eye, upper=True)   # L⁻ᵀ
    if bool(bad.any()):
        sub = exact_cov(bad).double() if exact_cov is not None else c64[bad]
        finite = torch.isfinite(sub).flatten(-2).all(-1)
        if not bool(finite.all()):            # NaN/Inf (σ or x not finite): propagate NaN, do not raise here
            sub = torch.where(finite[:, None, None], sub, 0.0)
        lam, vec = torch.linalg.eigh(sub)
        if not bool(finite.all()):
            vec = torch.where(finite[:, None, None], vec, float("nan"))
        keep = lam > eig_rtol * lam.amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        root = torch.where(keep, lam.clamp_min(0).sqrt(), 0.0)
        inv = torch.where(keep, 1.0 / torch.where(keep, root, 1.0), 0.0)
        chol = chol.clone()
        chol[bad] = vec * root.unsqueeze(-2)
        w[bad] = vec * inv.unsqueeze(-2)
    return chol.to(cov.dtype), w.to(cov.dtype)


def sigma_grad_from_k(k: torch.Tensor, z: torch.Tensor, weight_sigma: torch.Tensor) -> torch.Tensor:
    """∂C/∂σ of the weights from K (B, J, T, T) and Z (B, T, T, in): σ ⊙ (K_(J, B·T·T) @ Z_(B·T·T, in))."""
    b, j, t, _ = k.shape
    return weight_sigma * (k.transpose(0, 1).reshape(j, b * t * t) @ z.reshape(b * t * t, -1))
