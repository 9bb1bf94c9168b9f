"""Several independent Bayesian spiking networks (streams) trained as one batched computation.

:class:`StackedSpikingMLP` holds K :class:`~mesu_snn.SpikingMLP` of one architecture (different
seeds, or different data streams) with every (μ, σ) stacked along a leading stream dim K, so one
forward / backward / MESU update serves all K: the K·M weight samples run as one batch of
per-sample matmuls, fused LIF layers and one foreach update (MESU is elementwise, so a stacked
update equals K separate ones). With one ``torch.Generator`` per stream (``generators=``) the noise
of stream k is drawn from its own generator in the order its own SpikingMLP would draw it, so a run
equals running the K networks one by one (to floating-point rounding of the batched matmuls;
``tests/test_multistream.py``). The input layer runs once per stream (their inputs differ; with
``estimator="local"`` one :func:`~mesu_snn.kernels.local_linear` each, with "weights" one weight draw
and matmul each, which kept the (M, H, in) weights cache-sized and measured faster than one stacked
(K, M, H, in) draw); the hidden and output layers, the LIF layers, the loss and the update are batched.

Shapes: x (K, T, B, in) -> (K, M, B, classes). Sample mode only; the neurons' settings must agree.
The optimizer is built on :meth:`StackedSpikingMLP.pairs`; its non-finite guard is shared by the
streams (a NaN in one stream skips the step of all). Hyperparameters must be the same for all
streams (per-stream settings: build one parameter group per stream on the one-by-one models).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .kernels.gaussian_weight import gaussian_weight
from .kernels.local_linear import local_linear
from .kernels.noise import standard_normal
from .kernels.spike_linear import spike_linear
from .models import SpikingMLP, _lif_over_time, _readout

__all__ = ["StackedSpikingMLP", "nll_loss_streams"]


class _StackedGaussianWeight(torch.autograd.Function):
    """w = μ + σ·ε for μ, σ (K, *W) and ε (K, M, *W) as one node (as
    :func:`mesu_snn.kernels.gaussian_weight`, with the sample dim second): ∂C/∂μ = Σ_m g,
    ∂C/∂σ = Σ_m g·ε accumulated sample by sample."""

    @staticmethod
    def forward(ctx, mu, sigma, eps):
        ctx.save_for_backward(eps)
        return torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (eps,) = ctx.saved_tensors
        g_mu = g.sum(1) if ctx.needs_input_grad[0] else None
        g_sigma = None
        if ctx.needs_input_grad[1]:
            g_sigma = g[:, 0] * eps[:, 0]
            for m in range(1, g.shape[1]):
                g_sigma.addcmul_(g[:, m], eps[:, m])
        return g_mu, g_sigma, None


class StackedSpikingMLP(nn.Module):
    """K SpikingMLPs of one architecture as one module (parameters copied in, stacked)."""

    def __init__(self, models: Sequence[SpikingMLP]):
        super().__init__()
        models = list(models)
        if not models or not all(type(m) is SpikingMLP for m in models):
            raise ValueError("StackedSpikingMLP needs a non-empty list of SpikingMLP")
        ref = models[0]
        for m in models[1:]:
            if m.sizes != ref.sizes or m.readout != ref.readout:
                raise ValueError(f"all streams need the same sizes and readout, got {m.sizes}/{m.readout} "
                                 f"vs {ref.sizes}/{ref.readout}")
            if any(a.params != b.params for a, b in zip(m.neurons, ref.neurons)):
                raise ValueError("all streams need the same neuron settings (beta, threshold, reset, surrogate)")
            if any((la.bias_mu is None) != (lb.bias_mu is None) or la.estimator != lb.estimator
                   for la, lb in zip(m.layers, ref.layers)):
                raise ValueError("all streams need the same bias setting and input-layer estimator")
        self.streams, self.sizes, self.readout = len(models), list(ref.sizes), ref.readout
        self.estimator = ref.layers[0].estimator
        self.neurons = ref.neurons            # shared settings (no trainable state)
        self.has_bias = ref.layers[0].bias_mu is not None

        def stack(get):
            return nn.ParameterList(nn.Parameter(torch.stack([get(m.layers[i]).detach() for m in models]).clone())
                                    for i in range(len(ref.layers)))
        self.weight_mu, self.weight_sigma = stack(lambda l: l.weight_mu), stack(lambda l: l.weight_sigma)
        if self.has_bias:
            self.bias_mu, self.bias_sigma = stack(lambda l: l.bias_mu), stack(lambda l: l.bias_sigma)

    def pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(μ, σ) pairs, each (K, ...), in the order of the layers (weights, then bias, per layer)."""
        out = []
        for i in range(len(self.weight_mu)):
            out.append((self.weight_mu[i], self.weight_sigma[i]))
            if self.has_bias:
                out.append((self.bias_mu[i], self.bias_sigma[i]))
        return out

    @torch.no_grad()
    def copy_into(self, models: Sequence[SpikingMLP]) -> None:
        """Write stream k's μ and σ into ``models[k]``."""
        if len(models) != self.streams:
            raise ValueError(f"expected {self.streams} models, got {len(models)}")
        for k, m in enumerate(models):
            for i, layer in enumerate(m.layers):
                layer.weight_mu.copy_(self.weight_mu[i][k])
                layer.weight_sigma.copy_(self.weight_sigma[i][k])
                if self.has_bias:
                    layer.bias_mu.copy_(self.bias_mu[i][k])
                    layer.bias_sigma.copy_(self.bias_sigma[i][k])

    def _draw(self, i: int, samples: int, generators) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights (K·M, out, in) and biases (K·M, out) of layer i; stream k's noise from generators[k],
        drawn as :meth:`mesu_snn.BayesLinear.draw_noise` draws it (weights, then bias)."""
        mu, sig = self.weight_mu[i], self.weight_sigma[i]
        ew, eb = [], []
        for k in range(self.streams):
            gen = None if generators is None else generators[k]
            ew.append(standard_normal((samples, *mu.shape[1:]), generator=gen, dtype=mu.dtype, device=mu.device))
            if self.has_bias:
                eb.append(standard_normal((samples, mu.shape[1]), generator=gen, dtype=mu.dtype, device=mu.device))
        w = _StackedGaussianWeight.apply(mu, sig, torch.stack(ew))               # (K, M, out, in)
        b = None
        if self.has_bias:
            b = self.bias_mu[i].unsqueeze(1) + self.bias_sigma[i].unsqueeze(1) * torch.stack(eb)
            b = b.reshape(-1, b.shape[-1])
        return w.reshape(-1, *w.shape[2:]), b

    def forward(self, x: torch.Tensor, samples: int = 1, generators: Sequence[torch.Generator] | None = None):
        k = self.streams
        if x.dim() != 4 or x.shape[0] != k or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"StackedSpikingMLP expects input of shape (K={k}, T, B, {self.sizes[0]}), "
                             f"got {tuple(x.shape)}")
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive int, got {samples!r}")
        if generators is not None and len(generators) != k:
            raise ValueError(f"expected {k} generators (one per stream), got {len(generators)}")
        t, b, n_in = x.shape[1:]
        m = samples
        # one unbind per parameter (its backward stacks the K gradients once; indexing [s] K times
        # would zero-fill and add a full (K, H, in) gradient per stream)
        wmus, wsigs = self.weight_mu[0].unbind(0), self.weight_sigma[0].unbind(0)
        bmus, bsigs = (self.bias_mu[0].unbind(0), self.bias_sigma[0].unbind(0)) if self.has_bias else ([None] * k,) * 2
        if self.estimator == "local":
            h = torch.cat([local_linear(x[s], wmus[s], wsigs[s], bmus[s], bsigs[s], samples=m,
                                        generator=None if generators is None else generators[s])
                           for s in range(k)])                                   # (K·M, T, B, H)
        else:
            # per stream (as local): the (M, H, in) input-layer weights of one stream stay cache-sized;
            # a stacked (K, M, H, in) draw measured slower than K separate ones on CPU
            hs = []
            for s in range(k):
                gen = None if generators is None else generators[s]
                mu, sig = wmus[s], wsigs[s]
                ew = standard_normal((m, *mu.shape), generator=gen, dtype=mu.dtype, device=mu.device)
                eb = None
                if self.has_bias:
                    eb = standard_normal((m, mu.shape[0]), generator=gen, dtype=mu.dtype, device=mu.device)
                w = gaussian_weight(mu, sig, ew)                                    # (M, H, in)
                y = (x[s].reshape(t * b, n_in) @ w.reshape(-1, n_in).t()).view(t, b, m, -1).permute(2, 0, 1, 3)
                if eb is not None:
                    y = y + gaussian_weight(bmus[s], bsigs[s], eb)[:, None, None, :]
                hs.append(y)
            h = torch.cat(hs)                                                       # (K·M, T, B, H)
        for i in range(1, len(self.weight_mu)):
            s = _lif_over_time(self.neurons[i - 1], h)
            w, bias = self._draw(i, m, generators)
            h = spike_linear(s.reshape(k * m, t * b, s.shape[-1]), w, bias).reshape(k * m, t, b, w.shape[1])
        return _readout(self.neurons[-1], h, self.readout).reshape(k, m, b, -1)


def nll_loss_streams(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_k :func:`mesu_snn.nll_loss` (out[k], y[k]). out (K, M, B, C) logits, y (K, B) classes."""
    if out.dim() != 4 or y.shape != (out.shape[0], out.shape[2]):
        raise ValueError(f"expected out (K, M, B, C) and y (K, B), got {tuple(out.shape)}, {tuple(y.shape)}")
    logp = F.log_softmax(out, dim=-1).mean(1)                                    # (K, B, C)
    return -logp.gather(-1, y.long().unsqueeze(-1)).sum()
