"""Pruning by signal-to-noise ratio ``|μ|/σ``: a synapse whose mean is small against its own
uncertainty is set to zero (μ = 0) in the mean network. Biases are never pruned."""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..synapses import bayesian_pairs

__all__ = ["snr", "prune_by_snr", "snr_threshold_for_fraction", "pruning_curve"]


def snr(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """|μ|/σ elementwise."""
    return mu.detach().abs() / sigma.detach()


def _weight_pairs(model):
    return [(n, mu, s) for n, mu, s in bayesian_pairs(model) if not n.endswith("bias")]


def prune_by_snr(model: nn.Module, threshold: float) -> tuple[nn.Module, float]:
    """(copy with μ = 0 where |μ|/σ < threshold, fraction of weights pruned)."""
    if not threshold >= 0:
        raise ValueError(f"SNR threshold must be >= 0, got {threshold!r}")
    out = copy.deepcopy(model)
    pruned = total = 0
    with torch.no_grad():
        for _, mu, s in _weight_pairs(out):
            mask = snr(mu, s).double() < threshold
            mu[mask] = 0.0
            pruned += int(mask.sum())
            total += mu.numel()
    return out, pruned / max(total, 1)


def snr_threshold_for_fraction(model: nn.Module, fraction: float) -> float:
    """The SNR threshold that prunes ``fraction`` (in [0, 1]) of all weights."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    r = np.sort(np.concatenate([snr(mu, s).reshape(-1).double().cpu().numpy() for _, mu, s in _weight_pairs(model)]))
    k = int(round(fraction * len(r)))
    if k == 0:
        return 0.0
    if k < len(r) and r[k - 1] < r[k]:
        return float((r[k - 1] + r[k]) / 2)          # exactly the k smallest fall below
    return float(np.nextafter(r[k - 1], np.inf))      # last or tied: the k smallest and their ties


def pruning_curve(model: nn.Module, evaluate: Callable[[nn.Module], float],
                  fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)) -> list[dict]:
    """[{"target", "threshold", "fraction", "accuracy"}] for each target fraction pruned;
    ``evaluate(model) -> accuracy``."""
    rows = []
    for f in fractions:
        th = snr_threshold_for_fraction(model, f)
        pruned, frac = prune_by_snr(model, th)
        rows.append({"target": float(f), "threshold": th, "fraction": frac, "accuracy": float(evaluate(pruned))})
    return rows
