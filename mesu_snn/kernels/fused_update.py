"""MESU and BGD over all (μ, σ) pairs at once, in place, with ``torch._foreach_*`` ops.

The equations are written (readably) in :mod:`mesu_snn.functional.mesu` and
:mod:`mesu_snn.functional.bgd`; this module evaluates the same formulas, rearranged to need
fewer elementwise passes and no temporaries per pair, over lists of tensors (one launch per
op for all pairs on CUDA). Results equal the pure functions to floating-point rounding.

MESU rearranged (σ > 0, so σ²·clip(g, ±c/σ) = σ·clip(σ·g, ±c)), with a = clip(σ·∂C/∂μ, ±c),
b = clip(σ·∂C/∂σ, ±c), k = B/(N·σ_prior²) (N in samples, B the batch size)::

    Δμ = σ · (σ·k·(μ_prior − μ) − lr_μ·a)
    Δσ = σ · (k/2·(σ_prior² − σ²) − lr_σ·b/2)

The bracketed factors are built first and the final ``σ ·`` is an in-place addcmul into μ
and σ (the old σ is read before it is written, elementwise).

BGD with h = σ·∂C/∂σ/2: ``Δμ = −lr·σ·(σ·∂C/∂μ)``, ``σ ← σ·(√(1 + h²) − h)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["fused_mesu_step", "fused_bgd_step", "mesu_deltas", "bgd_factors", "all_finite", "mesu_new_values",
           "bgd_new_values", "values_ok"]

Tensors = Sequence[torch.Tensor]


def _check(mus: Tensors, sigmas: Tensors, gmus: Tensors, gsigmas: Tensors) -> tuple[list, ...]:
    lists = [list(mus), list(sigmas), list(gmus), list(gsigmas)]
    n = len(lists[0])
    if any(len(lst) != n for lst in lists):
        raise ValueError(f"need equally long lists of μ, σ, ∂C/∂μ, ∂C/∂σ, got lengths {[len(lst) for lst in lists]}")
    for mu, s, gm, gs in zip(*lists):
        if not (mu.shape == s.shape == gm.shape == gs.shape):
            raise ValueError(f"μ, σ and their gradients must share one shape, got {tuple(mu.shape)}, "
                             f"{tuple(s.shape)}, {tuple(gm.shape)}, {tuple(gs.shape)}")
    return tuple(lists)


def _scaled_clipped(sigmas: list, grads: list, c: float | None) -> list:
    """clip(σ·g, −c, c) per tensor (no clipping if c is None)."""
    out = torch._foreach_mul(sigmas, grads)
    if c is not None:
        torch._foreach_clamp_min_(out, -c)
        torch._foreach_clamp_max_(out, c)
    return out


def _mesu_over_sigma(mus: list, sigmas: list, gmus: list, gsigmas: list, *, memory, sigma_prior, mu_prior,
                     lr_mu, lr_sigma, clamp_grad, batch_size=1) -> tuple[list, list]:
    """(Δμ/σ, Δσ/σ) for every pair: Δμ/σ = σ·k·(μ_prior − μ) − lr_μ·a and
    Δσ/σ = k/2·(σ_prior² − σ²) − lr_σ·b/2. Without a clamp, a = σ·∂C/∂μ and b = σ·∂C/∂σ are
    folded into one addcmul each (no temporaries for them)."""
    k = float(batch_size) / (float(memory) * float(sigma_prior) ** 2)
    pmu = torch._foreach_mul(mus, -k)
    if mu_prior != 0.0:
        torch._foreach_add_(pmu, k * float(mu_prior))
    torch._foreach_mul_(pmu, sigmas)
    psig = torch._foreach_mul(sigmas, sigmas)
    torch._foreach_mul_(psig, -k / 2.0)
    torch._foreach_add_(psig, k / 2.0 * float(sigma_prior) ** 2)
    if clamp_grad is None:
        torch._foreach_addcmul_(pmu, sigmas, gmus, value=-lr_mu)
        torch._foreach_addcmul_(psig, sigmas, gsigmas, value=-lr_sigma / 2.0)
    else:
        torch._foreach_add_(pmu, _scaled_clipped(sigmas, gmus, clamp_grad), alpha=-lr_mu)
        torch._foreach_add_(psig, _scaled_clipped(sigmas, gsigmas, clamp_grad), alpha=-lr_sigma / 2.0)
    return pmu, psig


def _mesu_factors(mus, sigmas, grads_mu, grads_sigma, memory, sigma_prior, mu_prior, lr_mu, lr_sigma,
                  clamp_grad, batch_size) -> tuple[list, list, list, list]:
    """Checked lists of μ and σ, and (Δμ/σ, Δσ/σ) for every pair (empty lists for no pairs)."""
    mus, sigmas, gmus, gsigmas = _check(mus, sigmas, grads_mu, grads_sigma)
    if not mus:
        return [], [], [], []
    pmu, psig = _mesu_over_sigma(mus, sigmas, gmus, gsigmas, memory=memory, sigma_prior=sigma_prior,
                                 mu_prior=mu_prior, lr_mu=lr_mu, lr_sigma=lr_sigma, clamp_grad=clamp_grad,
                                 batch_size=batch_size)
    return mus, sigmas, pmu, psig


def mesu_deltas(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors, *,
                memory: float, sigma_prior: float, mu_prior: float = 0.0, lr_mu: float = 1.0,
                lr_sigma: float = 1.0, clamp_grad: float | None = 0.5, batch_size: int = 1) -> tuple[list, list]:
    """The MESU increments (Δμ list, Δσ list) for every pair; nothing is modified."""
    mus, sigmas, dmu, dsig = _mesu_factors(mus, sigmas, grads_mu, grads_sigma, memory, sigma_prior, mu_prior, lr_mu,
                                          lr_sigma, clamp_grad, batch_size)
    if not mus:
        return [], []
    torch._foreach_mul_(dmu, sigmas)
    torch._foreach_mul_(dsig, sigmas)
    return dmu, dsig


@torch.no_grad()
def fused_mesu_step(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors, *,
                    memory: float, sigma_prior: float, mu_prior: float = 0.0, lr_mu: float = 1.0,
                    lr_sigma: float = 1.0, clamp_grad: float | None = 0.5, batch_size: int = 1) -> None:
    """One MESU step on every pair, in place. Same arguments as
    :func:`mesu_snn.functional.mesu.mesu_update` (scalars only), lists instead of tensors."""
    mus, sigmas, pmu, psig = _mesu_factors(mus, sigmas, grads_mu, grads_sigma, memory, sigma_prior, mu_prior, lr_mu,
                                          lr_sigma, clamp_grad, batch_size)
    if not mus:
        return
    torch._foreach_addcmul_(mus, pmu, sigmas)      # μ += σ·(Δμ/σ), with the old σ
    torch._foreach_addcmul_(sigmas, psig, sigmas)  # σ += σ·(Δσ/σ), elementwise in place


@torch.no_grad()
def mesu_new_values(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors, *,
                    memory: float, sigma_prior: float, mu_prior: float = 0.0, lr_mu: float = 1.0,
                    lr_sigma: float = 1.0, clamp_grad: float | None = 0.5,
                    batch_size: int = 1) -> tuple[list, list]:
    """The new (μ list, σ list) of one MESU step, computed into new tensors (nothing is
    modified): the same operations as :func:`fused_mesu_step`, so copying them into μ and σ
    gives bit for bit its result. Lets a caller check the step before applying it."""
    mus, sigmas, pmu, psig = _mesu_factors(mus, sigmas, grads_mu, grads_sigma, memory, sigma_prior, mu_prior, lr_mu,
                                          lr_sigma, clamp_grad, batch_size)
    if not mus:
        return [], []
    return torch._foreach_addcmul(mus, pmu, sigmas), torch._foreach_addcmul(sigmas, psig, sigmas)


def bgd_factors(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors) -> tuple[list, list]:
    """BGD as (σ·(σ·∂C/∂μ) list, σ multiplier list): μ ← μ − lr·first, σ ← σ·second."""
    mus, sigmas, gmus, gsigmas = _check(mus, sigmas, grads_mu, grads_sigma)
    if not mus:
        return [], []
    dmu = torch._foreach_mul(sigmas, gmus)
    torch._foreach_mul_(dmu, sigmas)
    h = torch._foreach_mul(sigmas, gsigmas)
    torch._foreach_mul_(h, 0.5)
    root = torch._foreach_mul(h, h)
    torch._foreach_add_(root, 1.0)
    torch._foreach_sqrt_(root)
    torch._foreach_sub_(root, h)
    return dmu, root


@torch.no_grad()
def fused_bgd_step(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors, *,
                   lr: float = 1.0) -> None:
    """One BGD step on every pair, in place (see :func:`mesu_snn.functional.bgd.bgd_update`)."""
    dmu, root = bgd_factors(mus, sigmas, grads_mu, grads_sigma)
    if dmu:
        torch._foreach_add_(list(mus), dmu, alpha=-lr)
        torch._foreach_mul_(list(sigmas), root)


@torch.no_grad()
def bgd_new_values(mus: Tensors, sigmas: Tensors, grads_mu: Tensors, grads_sigma: Tensors, *,
                   lr: float = 1.0) -> tuple[list, list]:
    """The new (μ list, σ list) of one BGD step in new tensors, equal bit for bit to
    :func:`fused_bgd_step`'s in-place result; nothing is modified."""
    dmu, root = bgd_factors(mus, sigmas, grads_mu, grads_sigma)
    if not dmu:
        return [], []
    return torch._foreach_add(list(mus), dmu, alpha=-lr), torch._foreach_mul(list(sigmas), root)


@torch.no_grad()
def values_ok(finite: Tensors, positive: Tensors = ()) -> bool:
    """True if every tensor of ``finite`` holds only finite values and every tensor of
    ``positive`` only finite values > 0. Fast path: one sum per tensor (NaN/Inf propagate)
    and one min per ``positive`` tensor (NaN propagates), one host sync; only if that fails
    (a bad value, or finite values whose sum overflows) is each tensor checked exactly.
    (``isfinite(t).all()`` is avoided: on CPU it costs ~25 sums.)"""
    finite = [t.detach() for t in finite if t.numel()]
    positive = [t.detach() for t in positive if t.numel()]
    if not finite and not positive:
        return True
    total = torch.stack([t.sum().to(torch.float32) for t in [*finite, *positive]]).sum()
    ok = torch.isfinite(total)
    if positive:
        ok = ok & (torch.stack([t.amin().to(torch.float32) for t in positive]).amin() > 0)
    if bool(ok):
        return True
    inf = float("inf")
    for t in [*finite, *positive]:
        lo, hi = torch.aminmax(t)
        if not (bool(lo > -inf) and bool(hi < inf)):
            return False
    return all(bool(t.amin() > 0) for t in positive)


@torch.no_grad()
def all_finite(tensors: Tensors) -> bool:
    """True if no tensor holds NaN or ±Inf. Fast path: one sum per tensor and one host sync
    (NaN/Inf propagate through a sum); only if that sum is not finite (a bad value, or finite
    values overflowing) is each tensor checked exactly, so the answer is always exact."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return True
    total = torch.stack([t.sum().to(torch.float32) for t in tensors]).sum()
    if bool(torch.isfinite(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)
