"""``MESU``: the Metaplasticity-from-Synaptic-Uncertainty rule as a torch optimizer.

The equations are in :func:`mesu_snn.functional.mesu.mesu_update`; this class finds the
(μ, σ) pairs and applies them. Use with a loss summed over the mini-batch and averaged over
Monte-Carlo samples (:func:`mesu_snn.nll_loss`).

Units. ``memory`` N is in **samples**: the rule settles at 1/σ² = N·h + 1/σ_prior² (h the
curvature per sample) whatever the batch size, provided it knows the batch size B, the
number of samples each step's summed loss covers: ``opt.step(batch_size=B)`` (the trainer's
rules pass it), or ``MESU(..., batch_size=B)`` for a fixed B. The default B = 1 is the
paper's streaming setting. State dicts carry ``memory_unit = "samples"``; one without it
was written when N counted updates and is refused (see :func:`upgrade_legacy_state_dict`).
"""
from __future__ import annotations

import math

import torch

from ..functional.mesu import mesu_update
from ..bounds import check_number
from ..kernels.fused_update import mesu_new_values
from ..synapses import set_mode
from .bayes_optimizer import BayesianOptimizer, _groups_from
from .rule import Rule

__all__ = ["MESU", "MESURule", "upgrade_legacy_state_dict", "MEMORY_UNIT"]

#: Default gradient clamp c (gradients clipped to ±c/σ); with lr_sigma·c < 2 a step can shrink σ
#: at most by the factor (1 − c/2), so σ stays positive. Evidence (experiments/snn_clamp_check.py,
#: results/snn_clamp_check.json): a LIF 784-50-10 with the authors' init (σ₀ = 2/√784) on
#: standardised MNIST currents, N = 3e5 samples, σ_prior = 1: at batch 16 without the clamp σ < 0
#: after the first update; with c = 0.5 it trains (running accuracy 0.79 over 300 updates). At
#: batch 1 no collapse was seen in 1500 updates either way (0.71 vs 0.70), so the clamp costs
#: nothing there. The authors' ANN permuted-MNIST run uses no clamp (clamp_grad=None), as
#: experiments/paper_pmnist.py does.
DEFAULT_CLAMP_GRAD = 0.5

#: The unit of ``memory`` written into every parameter group (and so into state dicts).
MEMORY_UNIT = "samples"


def upgrade_legacy_state_dict(state_dict: dict, batch_size: int) -> dict:
    """Convert a MESU state dict saved before ``memory`` was in samples (then N counted updates,
    so a run at batch B had a window of N·B samples) into the current unit: memory ← memory·B,
    batch_size ← B. Returns a new dict; the caller states B, the batch size the old run used."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sd = dict(state_dict)
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if g.get("kind", "bayes") == "bayes" and "memory_unit" not in g:
            g["memory"] = g["memory"] * batch_size
            g["batch_size"] = batch_size
            g["memory_unit"] = MEMORY_UNIT
        groups.append(g)
    sd["param_groups"] = groups
    return sd


def _prior_at_init(params, other_lr) -> list[dict]:
    """``sigma_prior="init"``: the (μ, σ) pairs regrouped by their σ now, each group's σ_prior that
    σ: pairs whose σ is uniform and equal (as every init of :mod:`mesu_snn.synapses` makes a
    layer's weight and bias) share a group with a float prior; a pair with non-uniform σ gets its
    own group with a per-synapse copy. The prior is then the initial distribution, so a synapse
    that gets no curvature relaxes back to its initial σ rather than toward one σ_prior for all
    layers (with σ_prior = 1 and init="authors" the input layer's σ₀ = 2/√784 = 0.071, and its σ
    grows toward 1 wherever the data give less curvature than 1/σ₀²; experiments/results/
    snn_comparison). Once saved, the priors are the optimizer state's: ``load_state_dict``
    restores them, whatever σ the resumed model has when the optimizer is built."""
    out = []
    for g in _groups_from(params, other_lr):
        if g["kind"] != "bayes":
            out.append(g)
            continue
        rest = {k: v for k, v in g.items() if k not in ("params", "names")}
        by_value: dict[float, dict] = {}
        ps = g["params"]
        for name, mu, s in zip(g["names"], ps[0::2], ps[1::2]):
            s0 = s.detach()
            if s0.numel() and bool((s0 == s0.flatten()[0]).all()):
                prior = float(s0.flatten()[0])
                if prior in by_value:
                    by_value[prior]["params"] += [mu, s]
                    by_value[prior]["names"].append(name)
                    continue
                grp = by_value[prior] = {**rest, "params": [mu, s], "names": [name], "sigma_prior": prior}
            else:
                grp = {**rest, "params": [mu, s], "names": [name], "sigma_prior": s0.clone()}
            out.append(grp)
    return out


class MESU(BayesianOptimizer):
    """MESU optimizer.

    params: a model with Bayesian layers (pairs found by structure), a list of (μ, σ) pairs,
        or a list of dicts ``{"pairs": [...], **hyperparameters}``.
    memory: N, the memory window in samples (> 0). sigma_prior (> 0), mu_prior: the prior.
        ``sigma_prior="init"``: each layer's prior σ is its σ at construction (the pairs regrouped
        by that σ; the priors are saved in ``state_dict``).
    batch_size: B, samples per step's summed loss when ``step`` is not told (default 1);
        ``step(batch_size=B)`` overrides it for that step.
    lr_mu, lr_sigma: the learning rates of the two equations (1.0 in the paper).
    clamp_grad: c, each gradient clipped to ±c/σ before the step (None disables it).
    other_lr: SGD rate for non-Bayesian trainable parameters (else they are an error).
    on_nonfinite: ``"raise"`` (default) or ``"skip"`` a step whose gradients hold NaN/Inf;
        either way no μ or σ changes, and skipped steps are counted in ``skipped_steps``.
    per_layer: ``{layer pattern: {hyperparameter: value}}``, e.g. ``{"layers.1": {"memory": 1e5}}``
        (a shorter window for a readout): those layers' own group with those values; any of
        memory, sigma_prior, mu_prior, lr_mu, lr_sigma, clamp_grad (``bayes_optimizer``).
    """

    layer_keys = ("memory", "sigma_prior", "mu_prior", "lr_mu", "lr_sigma", "clamp_grad")

    def __init__(self, params, memory: float = 300_000, sigma_prior: float | str = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = DEFAULT_CLAMP_GRAD,
                 other_lr: float | None = None, on_nonfinite: str = "raise", batch_size: int = 1,
                 per_layer: dict | None = None):
        if isinstance(sigma_prior, str):
            if sigma_prior != "init":
                raise ValueError(f"sigma_prior must be a number > 0, a tensor or 'init', got {sigma_prior!r}")
            params = _prior_at_init(params, other_lr)
            sigma_prior = 1.0   # every Bayesian group carries its own
        defaults = dict(memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                        lr_sigma=lr_sigma, clamp_grad=clamp_grad, batch_size=batch_size, memory_unit=MEMORY_UNIT)
        super().__init__(params, defaults, other_lr=other_lr, on_nonfinite=on_nonfinite, per_layer=per_layer)

    #: bounds of the optimizer's hyperparameters (:mod:`mesu_snn.bounds`); MESURule's extend them
    bounds = {"memory": ">=1", "sigma_prior": ">0", "mu_prior": "real", "lr_mu": ">=0", "lr_sigma": ">=0",
              "clamp_grad": ">0"}
    #: why each bound holds, for the error message
    reasons = {"memory": "N counts samples; below one sample the prior step overshoots "
                         "(its relaxation factor 1 - B/N changes sign)"}

    def _check_group(self, g):
        if g["kind"] != "bayes":
            return
        for k, bound in self.bounds.items():
            if k == "clamp_grad" and g[k] is None:
                continue
            check_number(k, g[k], bound, self.reasons.get(k, ""))
        _check_batch(g["batch_size"])
        c = g["clamp_grad"]
        if c is not None and isinstance(g["lr_sigma"], (int, float)) and g["lr_sigma"] * c >= 2:
            raise ValueError(f"lr_sigma·clamp_grad must be < 2, got {g['lr_sigma']!r}·{c!r} = {g['lr_sigma'] * c:g} "
                             "(one clipped gradient then shrinks σ by the factor 1 - lr_sigma·clamp_grad/2 <= 0)")
        if any(isinstance(g[k], torch.Tensor) for k in ("memory", "sigma_prior")):
            return
        # the prior term alone keeps σ > 0 only for σ < σ_prior·√(1 + 2N/B) (functional/mesu.py)
        top = max(float(s.detach().max()) for s in g["params"][1::2] if s.numel()) if g["params"] else 0.0
        limit = g["sigma_prior"] * math.sqrt(1.0 + 2.0 * g["memory"] / g["batch_size"])
        if top >= limit:
            raise ValueError(f"sigma_prior={g['sigma_prior']!r} is too small for memory={g['memory']!r} and the "
                             f"model's σ (largest {top:.3g}): the prior step would make σ <= 0 at once (it keeps "
                             f"σ > 0 only for σ < sigma_prior·√(1 + 2·memory/batch_size) = {limit:.3g})")

    def step(self, closure=None, batch_size: int | None = None):   # no_grad: BayesianOptimizer.step
        """One update. batch_size: B, the number of samples the summed loss covers (default:
        each group's ``batch_size``)."""
        if batch_size is not None:
            _check_batch(batch_size)
        self._step_batch = batch_size
        try:
            return super().step(closure)
        finally:
            self._step_batch = None

    def _batch(self, g) -> int:
        b = getattr(self, "_step_batch", None)
        return g["batch_size"] if b is None else b

    def _update(self, mu, sigma, gmu, gsigma, g):
        return mesu_update(mu, sigma, gmu, gsigma, memory=g["memory"], sigma_prior=g["sigma_prior"],
                           mu_prior=g["mu_prior"], lr_mu=g["lr_mu"], lr_sigma=g["lr_sigma"],
                           clamp_grad=g["clamp_grad"], batch_size=self._batch(g))

    def _fused_new(self, mus, sigmas, gmus, gsigmas, g):
        if type(self)._update is not MESU._update:
            return None   # a subclass changed the rule: use its per-pair _update
        if any(isinstance(g[k], torch.Tensor) for k in ("sigma_prior", "mu_prior", "memory")):
            return None   # per-synapse priors: the per-pair path handles tensors
        return mesu_new_values(mus, sigmas, gmus, gsigmas, memory=g["memory"], sigma_prior=g["sigma_prior"],
                               mu_prior=g["mu_prior"], lr_mu=g["lr_mu"], lr_sigma=g["lr_sigma"],
                               clamp_grad=g["clamp_grad"], batch_size=self._batch(g))

    def _native_args(self, g):
        if type(self)._update is not MESU._update or type(self)._fused_new is not MESU._fused_new:
            return None   # a subclass changed the rule
        if any(isinstance(g[k], torch.Tensor) for k in ("sigma_prior", "mu_prior", "memory", "lr_mu", "lr_sigma")):
            return None
        # the constants of fused_mesu_step's rearranged formulas (mesu_snn.kernels.fused_update)
        k = float(self._batch(g)) / (float(g["memory"]) * float(g["sigma_prior"]) ** 2)
        mp = float(g["mu_prior"])
        c = g["clamp_grad"]
        return ("mesu_pairs", -k, k * mp, int(mp != 0.0), -float(g["lr_mu"]), -k / 2.0,
                k / 2.0 * float(g["sigma_prior"]) ** 2, -float(g["lr_sigma"]) / 2.0, -1.0 if c is None else float(c))

    def load_state_dict(self, state_dict):
        for i, g in enumerate(state_dict.get("param_groups", [])):
            if g.get("kind", "bayes") == "bayes" and g.get("memory_unit") != MEMORY_UNIT:
                raise ValueError(
                    f"MESU state dict group {i} has no memory_unit={MEMORY_UNIT!r}: it was saved when memory "
                    f"counted updates (memory={g.get('memory')!r} meant memory×batch_size samples). Convert it "
                    "with mesu_snn.rules.mesu.upgrade_legacy_state_dict(state_dict, batch_size=B_of_that_run)")
        super().load_state_dict(state_dict)


def _check_batch(b) -> None:
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"batch_size must be a positive int (samples in the step's summed loss), got {b!r}")


class MESURule(Rule):
    """MESU (Bonnet et al.): Bayesian, task-free, loss summed over the batch."""
    name, bayesian = "mesu", True
    #: bounds per hyperparameter (the names and defaults come from __init__'s signature), the
    #: optimizer's: memory: N in samples; clamp_grad: a config's 0 disables the clamp (TOML has
    #: no None; build_rule), None does so here
    bounds = {**MESU.bounds, "clamp_grad": ">=0"}
    optional = ("clamp_grad",)

    def __init__(self, model: nn.Module, memory: float = 300_000, sigma_prior: float | str = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = 0.5,
                 per_layer: dict | None = None):
        args = dict(locals())
        args.pop("per_layer")       # a mapping: checked by MESU, group by group
        if sigma_prior == "init":   # each layer's prior σ is its initial σ (MESU checks the rest)
            args.pop("sigma_prior")
        self.check_hyperparameters(args)
        set_mode(model, "sample")
        opt = MESU(model, memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                   lr_sigma=lr_sigma, clamp_grad=clamp_grad, per_layer=per_layer)
        hp = dict(memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu, lr_sigma=lr_sigma,
                  clamp_grad=clamp_grad)
        if per_layer is not None:
            hp["per_layer"] = {k: dict(v) for k, v in per_layer.items()}
        super().__init__(model, opt, "sum", hp)

    def step(self) -> None:
        # the batch size of the last loss: N stays in samples for any B (and a short last batch)
        self.optimizer.step(batch_size=getattr(self, "last_batch_size", None))
