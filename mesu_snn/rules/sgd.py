"""Plain SGD and Adam on μ in mean mode (w = μ, σ frozen): the non-Bayesian baselines."""
from __future__ import annotations

import torch.nn as nn

from .rule import Rule, make_base_optimizer, mean_mode_parameters

__all__ = ["SGDRule", "AdamRule"]


class SGDRule(Rule):
    """Plain SGD on μ in mean mode (σ frozen), task-free."""
    name = "sgd"
    bounds = {"lr": ">0", "momentum": "[0,1)"}

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.0):
        self.check_hyperparameters(locals())
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, "sgd", lr, momentum), "mean",
                         dict(lr=lr, momentum=momentum))


class AdamRule(Rule):
    """Adam on μ in mean mode (σ frozen), task-free."""
    name = "adam"
    bounds = {"lr": ">0"}

    def __init__(self, model: nn.Module, lr: float = 1e-3):
        self.check_hyperparameters(locals())
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, "adam", lr), "mean", dict(lr=lr))
