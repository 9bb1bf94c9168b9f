"""Diagonal of the Hessian of the surrogate-gradient loss with respect to the means μ.

The loss is the per-sample mean NLL ``C/B = nll_loss(model(x, samples=1), y) / B`` of either

* ``weights="mean"`` (default): the mean network, w = μ; or
* ``weights="draw"``: one fixed weight draw w = μ + σ·ε (ε from ``generator``), so H is taken
  at that draw (∂²/∂μ² = ∂²/∂w² there).

"Surrogate-gradient loss": the spike nonlinearity is a Heaviside whose backward is the
surrogate, so the "gradient" g(μ) is the surrogate gradient that MESU/BGD use, and H = ∂g/∂μ
is obtained by differentiating that backward pass once more (double backward; the
surrogates' backward is written in differentiable torch ops). The second pass, like the first,
gives every spike the surrogate derivative, also where spikes feed later layers: it is the
"surrogate Hessian", not the finite-difference derivative of g (to which it is equal for a
layer whose output reaches the loss without a spike, e.g. the output layer of a membrane
readout; the tests check this). Its diagonal is what MESU's
σ encodes at its fixed point: 1/σ² ≈ N·H_diag + 1/σ_prior².

* :func:`hessian_diagonal`: exact, one Hessian-vector product per μ entry (small networks).
* :func:`hutchinson_diagonal`: unbiased estimate E[z ⊙ Hz] with Rademacher z (large networks).

Both return ``{pair name: tensor shaped like μ}`` (names as :func:`mesu_snn.bayesian_pairs`).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ..losses import nll_loss
from ..synapses import bayesian_pairs, mode_set, sampled_weights

__all__ = ["hessian_diagonal", "hutchinson_diagonal", "surrogate_loss", "reference_lif"]


@contextmanager
def reference_lif() -> Iterator[None]:
    """Run LIF layers on the reference (autograd) path: the fused kernels' hand-written backward
    passes are not twice differentiable (``mesu_snn.kernels.fast_paths(False)``)."""
    try:
        from ..kernels import fast_paths
    except ImportError:  # no fast paths in this build
        yield
        return
    with fast_paths(False):
        yield


def surrogate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: str = "mean",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample mean NLL of the mean network (``weights="mean"``) or of one fixed draw
    (``"draw"``, noise from ``generator``); x (T, B, ...), y (B,)."""
    if weights not in ("mean", "draw"):
        raise ValueError(f"weights must be 'mean' or 'draw', got {weights!r}")
    with mode_set(model, "mean" if weights == "mean" else "sample"):
        ctx = sampled_weights(model, 1, generator) if weights == "draw" else nullcontext()
        with ctx, reference_lif():
            out = model(x, samples=1)
    return nll_loss(out, y) / y.shape[0]


def _setup(model, x, y, weights, generator, loss_fn):
    pairs = bayesian_pairs(model)
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no Bayesian layers")
    names, mus = [n for n, _, _ in pairs], [mu for _, mu, _ in pairs]
    if loss_fn is not None:
        with reference_lif():
            loss = loss_fn(model)
    else:
        loss = surrogate_loss(model, x, y, weights, generator)
    grads = torch.autograd.grad(loss, mus, create_graph=True, allow_unused=True)
    # a μ the loss ignores, or on which the gradient is constant, has a zero Hessian row
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    return names, mus, grads, live


def hessian_diagonal(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                     weights: str = "mean", generator: torch.Generator | None = None,
                     loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
                     max_entries: int = 20_000) -> dict[str, torch.Tensor]:
    """Exact diagonal of ∂²L/∂μ² for every Bayesian pair (one double-backward per entry).

    ``loss_fn(model) -> scalar`` replaces the default loss (see :func:`surrogate_loss`).
    Refuses networks with more than ``max_entries`` μ entries (use the Hutchinson estimator)."""
    total = sum(mu.numel() for _, mu, _ in bayesian_pairs(model))
    if total > max_entries:
        raise ValueError(f"exact Hessian diagonal over {total} entries exceeds max_entries={max_entries}; "
                         "use hutchinson_diagonal for large networks")
    names, mus, grads, live = _setup(model, x, y, weights, generator, loss_fn)
    out = {n: torch.zeros_like(mu).detach() for n, mu in zip(names, mus)}
    for k in live:
        name, mu, g = names[k], mus[k], grads[k]
        gf = g.reshape(-1)
        diag = torch.empty(gf.numel(), dtype=mu.dtype, device=mu.device)
        for i in range(gf.numel()):
            (row,) = torch.autograd.grad(gf[i], mu, retain_graph=True, allow_unused=True)
            diag[i] = 0.0 if row is None else row.reshape(-1)[i]
        out[name] = diag.reshape(mu.shape).detach()
    return out


def hutchinson_diagonal(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                        n_samples: int = 100, seed: int = 0, weights: str = "mean",
                        generator: torch.Generator | None = None,
                        loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Hutchinson estimate of diag(H): mean over ``n_samples`` Rademacher z of z ⊙ (H z).

    Each sample costs one Hessian-vector product over all μ jointly; ``seed`` fixes the z."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    names, mus, grads, live = _setup(model, x, y, weights, generator, loss_fn)
    gen = torch.Generator().manual_seed(int(seed))
    acc = [torch.zeros_like(mu) for mu in mus]
    for _ in range(n_samples):
        zs = [(torch.randint(0, 2, mu.shape, generator=gen) * 2 - 1).to(mu) for mu in mus]
        if not live:
            continue
        hz = torch.autograd.grad([grads[k] for k in live], mus, grad_outputs=[zs[k] for k in live],
                                 retain_graph=True, allow_unused=True)
        for a, z, h in zip(acc, zs, hz):
            if h is not None:
                a.add_(z * h)
    return {n: (a / n_samples).detach() for n, a in zip(names, acc)}
