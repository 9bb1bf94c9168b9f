"""The rules the trainer knows, and ``make_rule(name, model, **hp)``.

=========  ==========  ==========  ==========  ============================================
name       weights     batch loss  boundaries  hyperparameters (default)
=========  ==========  ==========  ==========  ============================================
``mesu``   μ + σε, M   sum         never       memory (300000), sigma_prior (0.1), mu_prior (0),
                                               lr_mu (1), lr_sigma (1), clamp_grad (0.5)
``bgd``    μ + σε, M   sum         never       lr (1.0, Zeno et al. 2018)
``sgd``    μ (mean)    mean        never       lr (0.01), momentum (0)
``adam``   μ (mean)    mean        never       lr (1e-3, Kingma & Ba 2015)
``ewc``    μ (mean)    mean        **given**   lr, base ("sgd"), momentum, ewc_lambda (100),
                                               gamma (1.0), fisher_samples (200)
``si``     μ (mean)    mean        **given**   lr, base ("sgd"), momentum, si_c (0.1), xi (1e-3)
=========  ==========  ==========  ==========  ============================================

Non-Bayesian rules train the *same* Bayesian model in mean mode: every layer computes with
w = μ, σ is frozen (``requires_grad=False``) and never used, and the optimizer updates the μ
tensors (plus any other trainable parameter of the model). So network, initial μ and data are
identical across rules. MESU's loss is summed over the batch (its memory N is in samples and
the rule is told the batch size B at every step); BGD's is summed too, as in Zeno et al.'s code
(which multiplies the mean-loss gradient by the batch size, and in the authors' FOO-VB); the
baselines use the mean so that their papers' learning rates apply.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from ..synapses import bayesian_pairs, set_mode
from .bgd import BGD
from .mesu import MESU
from .rule import Rule

__all__ = ["MESURule", "BGDRule", "SGDRule", "AdamRule", "make_rule", "RULES", "mean_mode_parameters",
           "make_base_optimizer"]

RULES = ("mesu", "bgd", "sgd", "adam", "ewc", "si")


class MESURule(Rule):
    """MESU (Bonnet et al.): Bayesian, task-free, loss summed over the batch."""
    name, bayesian = "mesu", True

    def __init__(self, model: nn.Module, memory: float = 300_000, sigma_prior: float = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = 0.5):
        set_mode(model, "sample")
        opt = MESU(model, memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                   lr_sigma=lr_sigma, clamp_grad=clamp_grad)
        super().__init__(model, opt, "sum", dict(memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior,
                                                 lr_mu=lr_mu, lr_sigma=lr_sigma, clamp_grad=clamp_grad))

    def step(self) -> None:
        # the batch size of the last loss: N stays in samples for any B (and a short last batch)
        self.optimizer.step(batch_size=getattr(self, "last_batch_size", None))


class BGDRule(Rule):
    """BGD (Zeno et al. 2018): Bayesian, task-free, loss summed over the batch (their code takes the
    gradient of the mean loss times the batch size)."""
    name, bayesian = "bgd", True

    def __init__(self, model: nn.Module, lr: float = 1.0):
        set_mode(model, "sample")
        super().__init__(model, BGD(model, lr=lr), "sum", dict(lr=lr))


def mean_mode_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Put ``model`` in mean mode (w = μ), freeze every σ, and return the parameters a
    non-Bayesian optimizer trains: every μ and any other trainable parameter."""
    pairs = bayesian_pairs(model)
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no Bayesian layers; the rules expect mesu_snn layers "
                         "(use mesu_snn.bayesianize(model))")
    set_mode(model, "mean")
    sigma_ids = set()
    for _, _, s in pairs:
        s.requires_grad_(False)
        sigma_ids.add(id(s))
    return [p for p in model.parameters() if p.requires_grad and id(p) not in sigma_ids]


def make_base_optimizer(params, base: str, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with optional momentum) or Adam over ``params``."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if base == "sgd":
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if base == "adam":
        if momentum:
            raise ValueError("momentum applies to base='sgd' only")
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"base must be 'sgd' or 'adam', got {base!r}")


class SGDRule(Rule):
    """Plain SGD on μ in mean mode (σ frozen), task-free."""
    name = "sgd"

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.0):
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, "sgd", lr, momentum), "mean",
                         dict(lr=lr, momentum=momentum))


class AdamRule(Rule):
    """Adam on μ in mean mode (σ frozen), task-free."""
    name = "adam"

    def __init__(self, model: nn.Module, lr: float = 1e-3):
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, "adam", lr), "mean", dict(lr=lr))


def _rule_classes() -> dict[str, type]:
    from .ewc import OnlineEWC
    from .si import SynapticIntelligence
    return {"mesu": MESURule, "bgd": BGDRule, "sgd": SGDRule, "adam": AdamRule, "ewc": OnlineEWC,
            "si": SynapticIntelligence}


def make_rule(name: str, model: nn.Module, **hp) -> Rule:
    """Build rule ``name`` (mesu, bgd, sgd, adam, ewc, si) for ``model`` with hyperparameters ``hp``.

    The model is switched to the mode the rule trains in (sample mode for MESU/BGD, mean mode
    with σ frozen for the others). An unknown rule or hyperparameter is a ``ValueError``."""
    table = _rule_classes()
    key = str(name).lower()
    if key not in table:
        raise ValueError(f"unknown rule {name!r}; expected one of {', '.join(RULES)}")
    cls = table[key]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(hp) - set(known))
    if unknown:
        raise ValueError(f"rule {key!r}: unknown hyperparameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return cls(model, **hp)
