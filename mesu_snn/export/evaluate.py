"""Accuracy of a model's mean network (or of its Bayesian average) on a labelled set."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..losses import predictive_log_probs
from ..synapses import mode_set

__all__ = ["accuracy"]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str = "mean", samples: int = 8,
             batch_size: int = 256, generator: torch.Generator | None = None) -> float:
    """Fraction of correct predictions. x (T, N, ...), y (N,). mode ``"mean"``: the w = μ
    network; ``"bayes"``: the average of ``samples`` weight draws (predictive distribution)."""
    if mode not in ("mean", "bayes"):
        raise ValueError(f"mode must be 'mean' or 'bayes', got {mode!r}")
    correct = 0
    with mode_set(model, "mean" if mode == "mean" else "sample"):
        for i in range(0, y.shape[0], batch_size):
            out = model(x[:, i:i + batch_size], samples=1 if mode == "mean" else samples, generator=generator)
            correct += int((predictive_log_probs(out).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(int(y.shape[0]), 1)
