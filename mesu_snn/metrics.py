"""Continual-learning and uncertainty metrics as pure functions.

Accuracy matrix. ``R`` is (T, T) with ``R[i, j]`` the test accuracy (a fraction) on task j
after training through task i (0-based); entries of tasks not yet seen (j > i) are NaN
(``None`` in JSON). Definitions:

* average accuracy (Chaudhry et al. 2018):  A_i = (1/(i+1)) Σ_{j≤i} R[i, j]; reported: A_{T-1}.
* backward transfer (Lopez-Paz & Ranzato 2017):  BWT = (1/(T-1)) Σ_{j<T-1} (R[T-1, j] − R[j, j]).
* forgetting (Chaudhry et al. 2018):  F = (1/(T-1)) Σ_{j<T-1} max_{j≤l<T-1} R[l, j] − R[T-1, j].
* learning accuracy (Riemer et al. 2019), the plasticity:  LA_i = R[i, i]; reported: mean_i LA_i.
* average of the last k tasks:  (1/k) Σ_{j≥T-k} R[T-1, j].

Uncertainty, from per-sample logits ``out`` of shape (M, B, C) (M Monte-Carlo weight samples;
p_m = softmax(out[m]); natural logarithms, so entropies are in nats):

* predictive (total) entropy  H[p̄],  p̄ = (1/M) Σ_m p_m
* aleatoric (expected) entropy  (1/M) Σ_m H[p_m]
* epistemic = mutual information between prediction and weights = total − aleatoric (≥ 0;
  exactly 0 for M = 1)
* expected calibration error (Guo et al. 2017): confidence max_c p̄_c in ``n_bins``
  equal-width bins (b/n, (b+1)/n], ECE = Σ_b (n_b/B)·|acc_b − conf_b|
* OOD AUROC: probability that a random out-of-distribution input scores higher than a random
  in-distribution one (ties count ½): the normalised Mann–Whitney U statistic.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["as_matrix", "average_accuracy", "average_accuracy_curve", "backward_transfer", "forgetting",
           "learning_accuracy", "average_last_k", "summarize", "accuracy", "predictive_entropy",
           "aleatoric_entropy", "mutual_information", "uncertainty_split", "expected_calibration_error",
           "auroc", "nan_to_none"]


# -- accuracy matrix ----------------------------------------------------------------------

def accuracy_array(R) -> np.ndarray:
    """An accuracy matrix as stored (list of lists, None where not evaluated) -> float64 array
    with NaN for None; no checks (see :func:`as_matrix`). The one place this conversion lives."""
    if isinstance(R, np.ndarray):
        return R.astype(np.float64)
    try:
        return np.array([[np.nan if v is None else float(v) for v in row] for row in R], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"accuracy matrix is not a matrix of numbers ({e})") from None


def as_matrix(R) -> np.ndarray:
    """R (list of lists with None/NaN where not evaluated, or an array) -> float64 (T, T).
    Every entry on and below the diagonal must be present and in [0, 1]."""
    a = accuracy_array(R)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"the accuracy matrix must be square (T, T) with T >= 1, got shape {a.shape}")
    lower = a[np.tril_indices(a.shape[0])]
    if np.isnan(lower).any():
        raise ValueError("the accuracy matrix has missing entries on or below the diagonal (R[i][j], j <= i)")
    finite = a[np.isfinite(a)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("accuracy matrix entries must be fractions in [0, 1]")
    return a


def average_accuracy_curve(R) -> np.ndarray:
    """A_i = mean_{j≤i} R[i, j] after every task: (T,)."""
    a = as_matrix(R)
    return np.array([a[i, :i + 1].mean() for i in range(a.shape[0])])


def average_accuracy(R) -> float:
    """Final average accuracy A_{T-1} = mean_j R[T-1, j]."""
    return float(as_matrix(R)[-1].mean())


def backward_transfer(R) -> float:
    """BWT = mean_{j<T-1} (R[T-1, j] − R[j, j]); negative means forgetting. 0.0 for one task."""
    a = as_matrix(R)
    t = a.shape[0]
    return 0.0 if t == 1 else float(np.mean([a[-1, j] - a[j, j] for j in range(t - 1)]))


def forgetting(R) -> float:
    """F = mean_{j<T-1} (max_{j≤l<T-1} R[l, j] − R[T-1, j]) (drop from the best). 0.0 for one task."""
    a = as_matrix(R)
    t = a.shape[0]
    return 0.0 if t == 1 else float(np.mean([a[j:t - 1, j].max() - a[-1, j] for j in range(t - 1)]))


def learning_accuracy(R) -> np.ndarray:
    """LA_i = R[i, i], the accuracy on each task right after learning it: (T,)."""
    return np.diag(as_matrix(R)).copy()


def average_last_k(R, k: int) -> float:
    """(1/k) Σ_{j≥T-k} R[T-1, j]; k must lie in [1, T]."""
    a = as_matrix(R)
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= a.shape[0]:
        raise ValueError(f"k must be an integer in [1, {a.shape[0]}], got {k!r}")
    return float(a[-1, a.shape[0] - int(k):].mean())


def nan_to_none(x):
    """Nested lists/arrays of floats with NaN -> lists with None (JSON has no NaN)."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def summarize(R, last_k: int = 3) -> dict:
    """Every accuracy-matrix metric as plain Python numbers (JSON-ready); last_k clipped to T."""
    a = as_matrix(R)
    la = learning_accuracy(a)
    k = min(int(last_k), a.shape[0])
    return {
        "accuracy_matrix": nan_to_none(a),
        "average_accuracy": average_accuracy(a),
        "average_accuracy_curve": [float(v) for v in average_accuracy_curve(a)],
        "backward_transfer": backward_transfer(a),
        "forgetting": forgetting(a),
        "learning_accuracy": float(la.mean()),
        "learning_accuracy_per_task": [float(v) for v in la],
        "last_k": k,
        "average_accuracy_last_k": average_last_k(a, k),
    }


# -- per-sample outputs (M, B, C) ---------------------------------------------------------

def _check_out(out: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        raise ValueError(f"expected per-sample outputs of shape (M, B, C), got {getattr(out, 'shape', type(out))}")
    return out.detach().to(torch.float64)


def _check_y(out: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.shape != (out.shape[1],):
        raise ValueError(f"expected targets of shape ({out.shape[1]},), got {getattr(y, 'shape', type(y))}")


def _probs(out: torch.Tensor) -> torch.Tensor:
    return F.softmax(_check_out(out), -1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


#: How the M samples are combined before the argmax: "probs" (default: the Bayesian model
#: average p̄ = mean softmax, the predictive distribution the uncertainty metrics use) or
#: "log_probs" (mean log-softmax, the MESU authors' evaluation, utils/testFunctions.py).
AVERAGES = ("probs", "log_probs")


def accuracy(out: torch.Tensor, y: torch.Tensor, average: str = "probs") -> float:
    """Accuracy of the MC-averaged prediction; out (M, B, C), y (B,). average: ``"probs"``
    (argmax of the mean softmax) or ``"log_probs"`` (argmax of the mean log-softmax)."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    o = _check_out(out)
    _check_y(o, y)
    z = F.softmax(o, -1) if average == "probs" else F.log_softmax(o, -1)
    return float((z.mean(0).argmax(-1) == y.to(z.device)).double().mean())


def predictive_entropy(out: torch.Tensor) -> torch.Tensor:
    """Total uncertainty H[p̄] (nats): (M, B, C) -> (B,)."""
    return _entropy(_probs(out).mean(0))


def aleatoric_entropy(out: torch.Tensor) -> torch.Tensor:
    """Expected entropy (1/M) Σ_m H[p_m] (nats): (M, B, C) -> (B,)."""
    return _entropy(_probs(out)).mean(0)


def mutual_information(out: torch.Tensor) -> torch.Tensor:
    """Epistemic uncertainty H[p̄] − E_m H[p_m] ≥ 0 (nats): (M, B, C) -> (B,)."""
    return (predictive_entropy(out) - aleatoric_entropy(out)).clamp_min(0.0)


def uncertainty_split(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"total", "aleatoric", "epistemic"}: each (B,) float64, total = aleatoric + epistemic."""
    p = _probs(out)
    total, ale = _entropy(p.mean(0)), _entropy(p).mean(0)
    return {"total": total, "aleatoric": ale, "epistemic": (total - ale).clamp_min(0.0)}


def expected_calibration_error(out: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """ECE of the MC-averaged prediction, equal-width confidence bins; out (M, B, C), y (B,)."""
    p = _probs(out)
    _check_y(p, y)
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    conf, pred = p.mean(0).max(-1)
    correct = (pred == y.to(pred.device)).double()
    # bin b holds confidences in (b/n, (b+1)/n]
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, int(n_bins) - 1)
    ece = 0.0
    for b in range(int(n_bins)):
        m = bins == b
        if m.any():
            ece += float(m.double().mean()) * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return ece


def auroc(scores_in: Sequence[float] | np.ndarray | torch.Tensor,
          scores_out: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """AUROC for telling OOD (positives, ``scores_out``) from in-distribution inputs
    (``scores_in``) by a score meant to be higher out of distribution; ties count ½."""
    a = torch.as_tensor(np.asarray(scores_in, dtype=np.float64) if not isinstance(scores_in, torch.Tensor)
                        else scores_in.detach().cpu(), dtype=torch.float64).flatten()
    b = torch.as_tensor(np.asarray(scores_out, dtype=np.float64) if not isinstance(scores_out, torch.Tensor)
                        else scores_out.detach().cpu(), dtype=torch.float64).flatten()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("auroc: scores must be finite")
    s = torch.cat([a, b]).numpy()
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average 1-based rank of each distinct value: ranks of ties are averaged
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    n_in, n_out = a.numel(), b.numel()
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))
