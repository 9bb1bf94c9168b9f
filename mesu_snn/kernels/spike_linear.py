"""Per-sample linear layer on binary spikes that keeps its input as ``bool`` for backward.

``y[m] = s[m] @ w[m]ᵀ (+ b[m])``, exactly the batched matmul of
:meth:`mesu_snn.BayesLinear._apply_sampled`, but autograd stores the spike input as one byte
per element instead of a float (the weight gradient ``gᵀ·s`` needs it). Between the hidden
layers of a spiking network that input is the largest saved tensor (M·T·B·hidden), so this
cuts the activation memory by about a third at workload W.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["spike_linear", "sampled_linear_backward"]


class _SpikeLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, w, b):
        wt = w.transpose(1, 2)
        y = torch.baddbmm(b.unsqueeze(1), s, wt) if b is not None else torch.bmm(s, wt)
        ctx.save_for_backward(s.to(torch.bool), w)
        ctx.dtype, ctx.has_bias = s.dtype, b is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        sb, w = ctx.saved_tensors
        ni = ctx.needs_input_grad
        return sampled_linear_backward(g, sb, w, ni[0], ni[1], ctx.has_bias and ni[2], ctx.dtype)


def sampled_linear_backward(g: torch.Tensor, s: torch.Tensor, w: torch.Tensor, need_s: bool = True,
                            need_w: bool = True, need_b: bool = False, dtype: torch.dtype | None = None):
    """Backward of y[m] = s[m] @ w[m]ᵀ (+ b[m]): g (M, P, out), s (M, P, in) (any dtype, cast to
    ``dtype`` if given), w (M, out, in) -> (∂C/∂s, ∂C/∂w, ∂C/∂b), each None if not needed."""
    gs = gw = gb = None
    if need_s:
        gs = torch.bmm(g, w)
    if need_w:
        gw = torch.bmm(g.transpose(1, 2), s if dtype is None or s.dtype == dtype else s.to(dtype))
    if need_b:
        gb = g.sum(1)
    return gs, gw, gb


def spike_linear(s: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                 check: bool = False) -> torch.Tensor:
    """s: (M, P, in) spikes (values 0/1), w: (M, out, in), b: (M, out) or None -> (M, P, out).

    The 0/1 property is assumed (``check=True`` verifies it at the cost of one pass)."""
    if s.dim() != 3 or w.dim() != 3 or s.shape[0] != w.shape[0] or s.shape[2] != w.shape[2]:
        raise ValueError(f"spike_linear expects s (M, P, in) and w (M, out, in), got {tuple(s.shape)}, {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[0], w.shape[1]):
        raise ValueError(f"spike_linear expects b of shape (M, out) = {(w.shape[0], w.shape[1])}, got {tuple(b.shape)}")
    if check and not bool(((s == 0) | (s == 1)).all()):
        raise ValueError("spike_linear: s must hold only 0 and 1")
    return _SpikeLinearFn.apply(s, w, b)
