"""``BGD``: Bayesian Gradient Descent (Zeno et al. 2018) as a torch optimizer.

The equations are in :func:`mesu_snn.functional.bgd.bgd_update`. Same parameter handling as
:class:`~mesu_snn.MESU`; BGD has no prior, so its σ only shrinks (vanishing plasticity).
"""
from __future__ import annotations

from ..functional.bgd import bgd_update
from ..bounds import check_number
from ..kernels.fused_update import bgd_new_values
from ..synapses import set_mode
from .bayes_optimizer import BayesianOptimizer
from .rule import Rule

__all__ = ["BGD", "BGDRule"]


class BGD(BayesianOptimizer):
    """BGD optimizer. lr: η of the μ step (1.0 in Zeno et al.)."""

    layer_keys = ("lr",)

    def __init__(self, params, lr: float = 1.0, other_lr: float | None = None, on_nonfinite: str = "raise",
                 per_layer: dict | None = None):
        super().__init__(params, dict(lr=lr), other_lr=other_lr, on_nonfinite=on_nonfinite, per_layer=per_layer)

    def _check_group(self, g):
        if g["kind"] == "bayes":
            check_number("lr", g["lr"], ">=0")

    def _update(self, mu, sigma, gmu, gsigma, g):
        return bgd_update(mu, sigma, gmu, gsigma, lr=g["lr"])

    def _fused_new(self, mus, sigmas, gmus, gsigmas, g):
        if type(self)._update is not BGD._update:
            return None   # a subclass changed the rule: use its per-pair _update
        return bgd_new_values(mus, sigmas, gmus, gsigmas, lr=g["lr"])


class BGDRule(Rule):
    """BGD (Zeno et al. 2018): Bayesian, task-free, loss summed over the batch (their code takes the
    gradient of the mean loss times the batch size)."""
    name, bayesian = "bgd", True
    bounds = {"lr": ">=0"}

    def __init__(self, model: nn.Module, lr: float = 1.0, per_layer: dict | None = None):
        self.check_hyperparameters({"lr": lr})
        set_mode(model, "sample")
        opt = BGD(model, lr=lr, per_layer=per_layer)
        hp = dict(lr=lr) if per_layer is None else dict(lr=lr, per_layer={k: dict(v) for k, v in per_layer.items()})
        super().__init__(model, opt, "sum", hp)
