"""Reparameterised Gaussian weights ``w = μ + σ·ε`` as one autograd node.

``gaussian_weight(mu, sigma, eps)``: μ, σ (*W), ε (M, *W) -> w (M, *W), the same values as
``mu + sigma * eps`` (what :meth:`mesu_snn.BayesLinear.sample_weights` computes). Autograd of
the plain expression runs a multiply node and an add node: it keeps a σ·ε temporary in the
forward pass and, in backward, a full (M, *W) product ``g·ε`` before reducing it over the
samples. Here the forward is one ``addcmul`` and the backward gives

    ∂C/∂μ = Σ_m g_m,        ∂C/∂σ = Σ_m g_m·ε_m

with ε accumulated sample by sample into a (*W) buffer (no (M, *W) temporary). Only ε is
saved for backward (autograd of the plain expression saves it too).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import native
from .switch import native_enabled

__all__ = ["gaussian_weight", "gaussian_weight_backward"]


class _GaussianWeightFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, eps):
        ctx.save_for_backward(eps)
        return torch.addcmul(mu, sigma, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (eps,) = ctx.saved_tensors
        g_mu, g_sigma = gaussian_weight_backward(g, eps, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return g_mu, g_sigma, None


def gaussian_weight_backward(g: torch.Tensor, eps: torch.Tensor, need_mu: bool = True,
                             need_sigma: bool = True, out=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """g = ∂C/∂w (M, *W), ε (M, *W) -> (∂C/∂μ = Σ_m g_m, ∂C/∂σ = Σ_m g_m·ε_m), either None if not needed;
    ``out``: optional (*W) buffers (for ∂C/∂μ, ∂C/∂σ; contiguous) written instead of new tensors."""
    o_mu, o_sig = (None, None) if out is None else out
    sfx = native.suffix(g) if native_enabled() and g.dtype == eps.dtype else None
    lib = native.library() if sfx is not None else None
    if lib is not None:
        # both sums in one compiled pass (Σ_m g, Σ_m g·ε, sample by sample as below)
        g, eps = g.contiguous(), eps.contiguous()
        m = g.shape[0]
        g_mu = (g.new_empty(g.shape[1:]) if o_mu is None else o_mu) if need_mu else None
        g_sigma = (g.new_empty(g.shape[1:]) if o_sig is None else o_sig) if need_sigma else None
        getattr(lib, f"gw_backward_{sfx}")(g.data_ptr(), eps.data_ptr(), 0 if g_mu is None else g_mu.data_ptr(),
                                          0 if g_sigma is None else g_sigma.data_ptr(), m, g[0].numel())
        return g_mu, g_sigma
    g_mu = (g.sum(0) if o_mu is None else torch.sum(g, 0, out=o_mu)) if need_mu else None
    g_sigma = None
    if need_sigma:
        g_sigma = g[0] * eps[0] if o_sig is None else torch.mul(g[0], eps[0], out=o_sig)
        for g_m, e_m in zip(g.unbind(0)[1:], eps.unbind(0)[1:]):
            g_sigma.addcmul_(g_m, e_m)
    return g_mu, g_sigma


def gaussian_weight(mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """mu, sigma: (*W); eps: (M, *W) standard normal draws -> w = mu + sigma·eps, (M, *W).

    Raises ValueError on mismatched shapes."""
    if mu.shape != sigma.shape or eps.dim() != mu.dim() + 1 or eps.shape[1:] != mu.shape:
        raise ValueError(f"gaussian_weight expects mu, sigma of one shape (*W) and eps (M, *W), got "
                         f"{tuple(mu.shape)}, {tuple(sigma.shape)}, {tuple(eps.shape)}")
    return _GaussianWeightFn.apply(mu, sigma, eps)
