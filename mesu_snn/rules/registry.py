"""The registry of the rules the trainer knows, and ``make_rule(name, model, **hp)``.

Each rule's :class:`~mesu_snn.rules.rule.Rule` wrapper lives next to its optimizer; its
hyperparameters are the constructor's keyword arguments (names and defaults read from the
signature) with the bounds the class declares, which :mod:`mesu_snn.config` validates.

=========  ==========  ==========  ==========  ============================================
name       weights     batch loss  boundaries  hyperparameters (default)
=========  ==========  ==========  ==========  ============================================
``mesu``   μ + σε, M   sum         never       memory (300000), sigma_prior (0.1, or "init":
                                               each layer's initial σ), mu_prior (0),
                                               lr_mu (1), lr_sigma (1), clamp_grad (0.5)
``bgd``    μ + σε, M   sum         never       lr (1.0, Zeno et al. 2018)
``sgd``    μ (mean)    mean        never       lr (0.01), momentum (0)
``adam``   μ (mean)    mean        never       lr (1e-3, Kingma & Ba 2015)
``ewc``    μ (mean)    mean        **given**   lr, base ("sgd"), momentum, ewc_lambda (100),
                                               gamma (1.0), fisher_samples (200)
``si``     μ (mean)    mean        **given**   lr, base ("sgd"), momentum, si_c (0.1), xi (1e-3)
``mesu_online``  μ + σε, M  sum    never       MESU's, feedback ("symmetric" | "random" | "local"),
                                               feedback_seed (0); eligibility traces, no BPTT
``sgd_online``   μ (mean)   mean   never       lr (0.01), momentum (0), feedback, feedback_seed
=========  ==========  ==========  ==========  ============================================

The ``*_online`` rules (:mod:`mesu_snn.rules.online`) compute their gradient forward in time with
eligibility traces (``rule.online``: the trainer calls ``rule.train_step(x, y, samples, generator)``
instead of backward); SpikingMLP with the membrane readout only.

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

import torch.nn as nn

from .bgd import BGDRule
from .ewc import OnlineEWC
from .mesu import MESURule
from .online import OnlineMESURule, OnlineSGDRule
from .rule import Rule
from .sgd import AdamRule, SGDRule
from .si import SynapticIntelligence

__all__ = ["RULES", "make_rule", "hyperparameters"]

#: name -> Rule class; the one list of rules (config, CLI and trainer read it)
RULES: dict[str, type[Rule]] = {"mesu": MESURule, "bgd": BGDRule, "sgd": SGDRule, "adam": AdamRule,
                                "ewc": OnlineEWC, "si": SynapticIntelligence,
                                "mesu_online": OnlineMESURule, "sgd_online": OnlineSGDRule}


def hyperparameters(name: str) -> dict[str, tuple[object, object]]:
    """{hyperparameter: (default, bound)} of rule ``name``, from its constructor and ``bounds``."""
    cls = RULES[name]
    sig = inspect.signature(cls.__init__).parameters
    return {p: (sig[p].default, cls.bounds.get(p, "real")) for p in sig if p not in ("self", "model")}


def make_rule(name: str, model: nn.Module, **hp) -> Rule:
    """Build rule ``name`` (mesu, bgd, sgd, adam, ewc, si, mesu_online, sgd_online) for ``model`` with hyperparameters ``hp``.

    The model is switched to the mode the rule trains in (sample mode for MESU/BGD, mean mode
    with σ frozen for the others). An unknown rule or hyperparameter is a ``ValueError``."""
    key = str(name).lower()
    if key not in RULES:
        raise ValueError(f"unknown rule {name!r}; expected one of {', '.join(RULES)}")
    cls = RULES[key]
    known = list(hyperparameters(key))
    unknown = sorted(set(hp) - set(known))
    if unknown:
        raise ValueError(f"rule {key!r}: unknown hyperparameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return cls(model, **hp)
