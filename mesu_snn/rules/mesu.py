"""``MESU``: the Metaplasticity-from-Synaptic-Uncertainty rule as a torch optimizer.

The equations are in :func:`mesu_snn.functional.mesu.mesu_update`; this class finds the
(μ, σ) pairs and applies them. Use with a loss summed over the mini-batch and averaged over
Monte-Carlo samples (:func:`mesu_snn.nll_loss`).
"""
from __future__ import annotations

import torch

from ..functional.mesu import mesu_update
from ..kernels.fused_update import fused_mesu_step
from ..synapses import set_mode
from .bayes_optimizer import BayesianOptimizer
from .rule import Rule

__all__ = ["MESU", "MESURule"]

#: Default gradient clamp c (gradients clipped to ±c/σ). With lr_sigma·c < 2 a step can at
#: most shrink σ by the factor (1 − c/2); 0.5 is the value that let MESU learn permuted MNIST
#: with batch 16 where the unclamped rule collapsed.
DEFAULT_CLAMP_GRAD = 0.5


class MESU(BayesianOptimizer):
    """MESU optimizer.

    params: a model with Bayesian layers (pairs found by structure), a list of (μ, σ) pairs,
        or a list of dicts ``{"pairs": [...], **hyperparameters}``.
    memory: N, the memory window in samples (> 0). sigma_prior (> 0), mu_prior: the prior.
    lr_mu, lr_sigma: the learning rates of the two equations (1.0 in the paper).
    clamp_grad: c, each gradient clipped to ±c/σ before the step (None disables it).
    other_lr: SGD rate for non-Bayesian trainable parameters (else they are an error).
    on_nonfinite: ``"raise"`` (default) or ``"skip"`` a step whose gradients hold NaN/Inf;
        either way no μ or σ changes, and skipped steps are counted in ``skipped_steps``.
    """

    def __init__(self, params, memory: float = 300_000, sigma_prior: float = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = DEFAULT_CLAMP_GRAD,
                 other_lr: float | None = None, on_nonfinite: str = "raise"):
        defaults = dict(memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                        lr_sigma=lr_sigma, clamp_grad=clamp_grad)
        super().__init__(params, defaults, other_lr=other_lr, on_nonfinite=on_nonfinite)

    def _check_group(self, g):
        if g["kind"] != "bayes":
            return
        if not g["memory"] > 0:
            raise ValueError(f"memory (N, in samples) must be > 0, got {g['memory']!r}")
        if not g["sigma_prior"] > 0:
            raise ValueError(f"sigma_prior must be > 0, got {g['sigma_prior']!r}")
        if g["lr_mu"] < 0 or g["lr_sigma"] < 0:
            raise ValueError(f"lr_mu and lr_sigma must be >= 0, got {g['lr_mu']!r}, {g['lr_sigma']!r}")
        if g["clamp_grad"] is not None and not g["clamp_grad"] > 0:
            raise ValueError(f"clamp_grad must be > 0 or None, got {g['clamp_grad']!r}")

    def _update(self, mu, sigma, gmu, gsigma, g):
        return mesu_update(mu, sigma, gmu, gsigma, memory=g["memory"], sigma_prior=g["sigma_prior"],
                           mu_prior=g["mu_prior"], lr_mu=g["lr_mu"], lr_sigma=g["lr_sigma"],
                           clamp_grad=g["clamp_grad"])

    def _fused_update(self, mus, sigmas, gmus, gsigmas, g):
        if type(self)._update is not MESU._update:
            return False   # a subclass changed the rule: use its per-pair _update
        if any(isinstance(g[k], torch.Tensor) for k in ("sigma_prior", "mu_prior", "memory")):
            return False   # per-synapse priors: the per-pair path handles tensors
        fused_mesu_step(mus, sigmas, gmus, gsigmas, memory=g["memory"], sigma_prior=g["sigma_prior"],
                        mu_prior=g["mu_prior"], lr_mu=g["lr_mu"], lr_sigma=g["lr_sigma"],
                        clamp_grad=g["clamp_grad"])
        return True


class MESURule(Rule):
    """MESU (Bonnet et al.): Bayesian, task-free, loss summed over the batch."""
    name, bayesian = "mesu", True
    #: config bounds per hyperparameter (the names and defaults come from __init__'s signature)
    bounds = {"memory": ">0", "sigma_prior": ">0", "mu_prior": "real", "lr_mu": ">=0", "lr_sigma": ">=0",
              "clamp_grad": ">0"}

    def __init__(self, model: nn.Module, memory: float = 300_000, sigma_prior: float = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = 0.5):
        set_mode(model, "sample")
        opt = MESU(model, memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                   lr_sigma=lr_sigma, clamp_grad=clamp_grad)
        super().__init__(model, opt, "sum", dict(memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior,
                                                 lr_mu=lr_mu, lr_sigma=lr_sigma, clamp_grad=clamp_grad))
