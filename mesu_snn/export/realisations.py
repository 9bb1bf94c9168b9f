"""K sampled weight realisations w = μ + σ·ε for stochastic (e.g. memristive) synapses: each
realisation is a deterministic network (μ set to the draw, σ kept) that a chip can run."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from ..synapses import bayesian_pairs

__all__ = ["sample_realisations", "realisation_accuracies"]


def sample_realisations(model: nn.Module, k: int, seed: int = 0) -> list[nn.Module]:
    """K copies of ``model``, copy i with μ ← μ + σ·ε_i (ε from a generator seeded by ``seed``)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"number of realisations must be a positive int, got {k!r}")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(k):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for _, mu, s in bayesian_pairs(m):
                eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype).to(mu.device)
                mu.add_(s * eps)
        out.append(m)
    return out


def realisation_accuracies(model: nn.Module, k: int, evaluate: Callable[[nn.Module], float],
                           seed: int = 0) -> list[float]:
    """evaluate(realisation) for K seeded realisations."""
    return [float(evaluate(m)) for m in sample_realisations(model, k, seed)]
