"""Signed fixed-point grids with stochastic rounding (for the integer variant of the online rule).

A b-bit signed fixed-point number with step Δ holds q·Δ, q an integer in [−(2^(b−1)−1), 2^(b−1)−1].
Stochastic rounding maps x to ⌊x/Δ⌋·Δ or (⌊x/Δ⌋+1)·Δ with probabilities that make it unbiased
(E[x̂] = x inside the range), so updates much smaller than Δ still move a weight on average (with
round-to-nearest they would be lost: MESU's steps σ²·g are often far below one least significant bit).
"""
from __future__ import annotations

import torch

__all__ = ["fixed_point_round", "fixed_point_step"]


def fixed_point_step(value_range: float, bits: int) -> float:
    """Δ of a b-bit signed grid covering ±value_range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")
    if not value_range > 0:
        raise ValueError(f"value_range must be > 0, got {value_range!r}")
    return float(value_range) / (2 ** (bits - 1) - 1)


def fixed_point_round(x: torch.Tensor, step: float, bits: int, generator: torch.Generator | None = None,
                      stochastic: bool = True, minimum: float | None = None) -> torch.Tensor:
    """x on the b-bit grid of step Δ (saturating); stochastic (unbiased) or to nearest.
    ``minimum``: clamp the result from below (e.g. one step, to keep σ > 0)."""
    qmax = 2 ** (bits - 1) - 1
    y = x / step
    if stochastic:
        low = torch.floor(y)
        u = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        q = low + (u < (y - low)).to(y.dtype)
    else:
        q = torch.round(y)
    out = q.clamp(-qmax, qmax) * step
    return out if minimum is None else out.clamp_min(minimum)
