"""Quantisation of the means μ to n-bit signed integers with one scale per layer tensor.

Symmetric, round-to-nearest: ``scale = max|μ| / (2^(n−1) − 1)``, ``q = clamp(round(μ/scale),
−(2^(n−1) − 1), 2^(n−1) − 1)``, ``μ̂ = q·scale`` (so 8 bits give integers in [−127, 127]).
σ is left as it is (a chip with deterministic synapses runs the mean network).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..synapses import bayesian_pairs

__all__ = ["quantize_tensor", "quantize_model"]


def quantize_tensor(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, float]:
    """(q int32 tensor, scale) with w ≈ q·scale; an all-zero tensor gets scale 1."""
    if not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    m = float(w.detach().abs().max()) if w.numel() else 0.0
    scale = m / qmax if m > 0 else 1.0
    q = torch.clamp(torch.round(w.detach().double() / scale), -qmax, qmax).to(torch.int32)
    return q, scale


def quantize_model(model: nn.Module, bits: int, biases: bool = True) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose μ are quantised (weights, and biases when ``biases``).

    Returns (copy, report) with report[pair] = {"bits", "scale", "int" (int32 tensor),
    "max_abs_error"}."""
    out = copy.deepcopy(model)
    report = {}
    with torch.no_grad():
        for name, mu, _ in bayesian_pairs(out):
            if name.endswith("bias") and not biases:
                continue
            q, scale = quantize_tensor(mu, bits)
            new = (q.double() * scale).to(mu.dtype)
            report[name] = {"bits": bits, "scale": scale, "int": q,
                            "max_abs_error": float((new - mu).abs().max()) if mu.numel() else 0.0}
            mu.copy_(new)
    return out, report
