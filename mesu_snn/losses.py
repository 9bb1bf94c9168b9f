"""The MESU likelihood term: negative log-likelihood over Monte-Carlo samples."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nll_loss", "predictive_log_probs"]


def _check(out: torch.Tensor, y: torch.Tensor | None = None):
    if out.dim() != 3:
        raise ValueError(f"expected per-sample outputs of shape (M, B, C), got {tuple(out.shape)}")
    if y is not None:
        if y.dim() != 1 or y.shape[0] != out.shape[1]:
            raise ValueError(f"expected targets of shape (B={out.shape[1]},), got {tuple(y.shape)}")
        if y.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise ValueError(f"expected integer class targets, got dtype {y.dtype}")


def nll_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C = −Σ_b (1/M) Σ_m log softmax(out[m, b])[y_b]: mean over MC samples, sum over the batch.

    out: (M, B, C) logits per sample (e.g. spike counts); y: (B,) class indices."""
    _check(out, y)
    logp = F.log_softmax(out, dim=-1).mean(0)
    return F.nll_loss(logp, y.long(), reduction="sum")


def predictive_log_probs(out: torch.Tensor) -> torch.Tensor:
    """log of the Bayesian model average: log (1/M) Σ_m softmax(out[m]) -> (B, C)."""
    _check(out)
    return torch.logsumexp(F.log_softmax(out, dim=-1), dim=0) - torch.log(torch.tensor(float(out.shape[0])))
