"""MESU update as one Triton kernel per (μ, σ) pair: one pass reads μ, σ, ∂C/∂μ, ∂C/∂σ and writes μ, σ.

Optional (``triton`` is not a dependency of mesu_snn): importing this module without triton raises
ImportError. The same formulas as :mod:`mesu_snn.kernels.fused_update` (read the derivation there):
with a = clip(σ·∂C/∂μ, ±c), b = clip(σ·∂C/∂σ, ±c), k = 1/(N·σ_prior²)::

    μ ← μ + σ·(σ·k·(μ_prior − μ) − lr_μ·a)
    σ ← σ + σ·(k/2·(σ_prior² − σ²) − lr_σ·b/2)        (the old σ on the right)

The foreach version needs 9 elementwise passes over the pairs; this kernel needs one (4 reads,
2 writes per synapse). Status: checked on CPU with Triton's interpreter (``TRITON_INTERPRET=1``,
``tests/test_kernels_triton_mesu.py``, against :func:`~mesu_snn.kernels.fused_update.fused_mesu_step`);
not wired into :class:`~mesu_snn.MESU` and not measured on a GPU (none was available to this work).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["triton_mesu_step"]

BLOCK = 1024


@triton.jit
def _mesu_kernel(mu_ptr, sig_ptr, gmu_ptr, gsig_ptr, n, k, mu_prior, sp2, lr_mu, lr_sigma, clamp,
                 HAS_CLAMP: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    mu = tl.load(mu_ptr + offs, mask=mask)
    s = tl.load(sig_ptr + offs, mask=mask)
    a = s * tl.load(gmu_ptr + offs, mask=mask)
    b = s * tl.load(gsig_ptr + offs, mask=mask)
    if HAS_CLAMP:
        a = tl.minimum(tl.maximum(a, -clamp), clamp)
        b = tl.minimum(tl.maximum(b, -clamp), clamp)
    dmu = s * k * (mu_prior - mu) - lr_mu * a
    dsig = 0.5 * k * (sp2 - s * s) - 0.5 * lr_sigma * b
    tl.store(mu_ptr + offs, mu + s * dmu, mask=mask)
    tl.store(sig_ptr + offs, s + s * dsig, mask=mask)


@torch.no_grad()
def triton_mesu_step(mus: Sequence[torch.Tensor], sigmas: Sequence[torch.Tensor], grads_mu: Sequence[torch.Tensor],
                     grads_sigma: Sequence[torch.Tensor], *, memory: float, sigma_prior: float, mu_prior: float = 0.0,
                     lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = 0.5) -> None:
    """One MESU step on every pair, in place; arguments as :func:`~mesu_snn.kernels.fused_mesu_step`
    (scalar hyperparameters). Every tensor must be contiguous, and the four of a pair share shape and dtype."""
    lists = [list(mus), list(sigmas), list(grads_mu), list(grads_sigma)]
    if len({len(lst) for lst in lists}) != 1:
        raise ValueError(f"need equally long lists of μ, σ, ∂C/∂μ, ∂C/∂σ, got lengths {[len(lst) for lst in lists]}")
    if not memory > 0 or not sigma_prior > 0:
        raise ValueError(f"memory and sigma_prior must be > 0, got {memory!r}, {sigma_prior!r}")
    k = 1.0 / (float(memory) * float(sigma_prior) ** 2)
    for mu, s, gm, gs in zip(*lists):
        if not (mu.shape == s.shape == gm.shape == gs.shape) or len({mu.dtype, s.dtype, gm.dtype, gs.dtype}) != 1:
            raise ValueError(f"μ, σ and their gradients must share one shape and dtype, got {tuple(mu.shape)}, "
                             f"{tuple(s.shape)}, {tuple(gm.shape)}, {tuple(gs.shape)}")
        if not all(t.is_contiguous() for t in (mu, s, gm, gs)):
            raise ValueError("triton_mesu_step needs contiguous tensors")
        n = mu.numel()
        if n == 0:
            continue
        grid = (triton.cdiv(n, BLOCK),)
        _mesu_kernel[grid](mu, s, gm, gs, n, k, float(mu_prior), float(sigma_prior) ** 2, float(lr_mu),
                           float(lr_sigma), float(clamp_grad or 0.0), HAS_CLAMP=clamp_grad is not None,
                           BLOCK_SIZE=BLOCK)
