"""Online EWC (Schwarz et al. 2018, "Progress & Compress", the online form of Kirkpatrick et
al. 2017's elastic weight consolidation) as a :class:`~mesu_snn.rules.rule.Rule`.

**This rule is told the task boundaries** (MESU, BGD, SGD and Adam are not): after the last
batch of task k the trainer calls :meth:`OnlineEWC.end_task`, which

1. estimates the diagonal Fisher information at the current weights θ_k,
   F_k = (1/n) Σ_i (∂ log p(y_i | x_i, θ) / ∂θ)², from ``fisher_samples`` training samples
   of task k, one gradient per sample, with the true labels (the "empirical" Fisher);
2. accumulates it with decay γ:  F̃ ← γ·F̃ + F_k;
3. moves the anchor to θ* = θ_k.

While learning later tasks the loss is  L_data + (λ/2)·Σ F̃ (θ − θ*)²  (λ = ``ewc_lambda``).
The network is trained in mean mode (w = μ, σ frozen) by a base optimizer, SGD or Adam.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..losses import nll_loss
from .rule import Rule, make_base_optimizer, mean_mode_parameters

__all__ = ["OnlineEWC", "fisher_diagonal"]


def fisher_diagonal(model: nn.Module, params: list[torch.Tensor], batches, max_samples: int | None = None,
                    dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Empirical Fisher diagonal of ``params``: the mean over samples of the squared per-sample
    gradient of log p(y_i | x_i) (the model as it is: put it in mean mode for EWC). ``batches``
    yields (x (T, B, ...), y (B,)); at most ``max_samples`` samples are used. The one home of this
    estimate (EWC's penalty and the observatory's importance comparison use it)."""
    acc = [torch.zeros_like(p, dtype=dtype or p.dtype) for p in params]
    n = 0
    bdim = getattr(model, "batch_dim", 1)      # (T, B, ...) spiking inputs; BayesMLP: (B, F)
    for x, y in batches:
        for i in range(y.shape[0]):
            if max_samples is not None and n >= max_samples:
                break
            loss = nll_loss(model(x.narrow(bdim, i, 1), samples=1), y[i:i + 1])   # −log p(y_i | x_i)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a.add_(g.detach().to(a.dtype).pow(2))
            n += 1
        if max_samples is not None and n >= max_samples:
            break
    if n == 0:
        raise ValueError("fisher_diagonal: no samples to estimate the Fisher information from")
    return [a / n for a in acc]


class OnlineEWC(Rule):
    """Online EWC on μ (mean mode). Uses task boundaries (see the module docstring)."""

    name = "ewc"
    uses_task_boundaries = True
    bounds = {"lr": ">0", "base": ("sgd", "adam"), "momentum": "[0,1)", "ewc_lambda": ">=0", "gamma": "[0,1]",
              "fisher_samples": "int>=1"}

    def __init__(self, model: nn.Module, lr: float = 0.01, base: str = "sgd", momentum: float = 0.0,
                 ewc_lambda: float = 100.0, gamma: float = 1.0, fisher_samples: int = 200):
        self.check_hyperparameters(locals())
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, base, lr, momentum), "mean",
                         dict(lr=lr, base=base, momentum=momentum, ewc_lambda=ewc_lambda, gamma=gamma,
                              fisher_samples=fisher_samples))
        self.params = params
        self.ewc_lambda, self.gamma, self.fisher_samples = float(ewc_lambda), float(gamma), fisher_samples
        self.fisher = [torch.zeros_like(p) for p in params]
        self.anchor = [p.detach().clone() for p in params]
        self.tasks_consolidated = 0

    def penalty(self) -> torch.Tensor | None:
        if self.tasks_consolidated == 0 or self.ewc_lambda == 0:
            return None
        total = sum((f * (p - a).pow(2)).sum() for p, f, a in zip(self.params, self.fisher, self.anchor))
        return 0.5 * self.ewc_lambda * total

    def fisher_diagonal(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Empirical diagonal Fisher over at most ``fisher_samples`` samples of ``batches``."""
        return fisher_diagonal(self.model, self.params, batches, self.fisher_samples)

    def end_task(self, task_index: int, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        fisher = self.fisher_diagonal(batches())
        with torch.no_grad():
            for f, new, a, p in zip(self.fisher, fisher, self.anchor, self.params):
                f.mul_(self.gamma).add_(new)
                a.copy_(p)
        self.tasks_consolidated += 1

    def extra_state(self) -> dict:
        return {"fisher": [f.clone() for f in self.fisher], "anchor": [a.clone() for a in self.anchor],
                "tasks_consolidated": self.tasks_consolidated}

    def load_extra_state(self, state: dict) -> None:
        for dst, src in zip(self.fisher + self.anchor, state["fisher"] + state["anchor"]):
            dst.copy_(src)
        self.tasks_consolidated = int(state["tasks_consolidated"])
