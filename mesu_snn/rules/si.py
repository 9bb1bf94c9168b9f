"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017) as a :class:`~mesu_snn.rules.rule.Rule`.

**This rule is told the task boundaries** (MESU, BGD, SGD and Adam are not). During a task
every update adds to the path integral  ω ← ω − g·Δθ,  with g the gradient of the data loss
alone (the penalty's gradient 2c·Ω(θ − θ*) is subtracted from the total gradient, as Zenke et
al.'s code uses the unregularised gradient) and Δθ the change the base optimizer made. After
task k (:meth:`SynapticIntelligence.end_task`):

    Ω ← Ω + ω / ((θ_k − θ_{k−1})² + ξ),   ω ← 0,   θ* ← θ_k

and later tasks minimise  L_data + c·Σ Ω (θ − θ*)²  (c = ``si_c``). The network is trained in
mean mode (w = μ, σ frozen) by a base optimizer, SGD or Adam.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from .rule import Rule, make_base_optimizer, mean_mode_parameters

__all__ = ["SynapticIntelligence", "si_importance"]


def si_importance(path_integral: torch.Tensor, delta: torch.Tensor, xi: float = 1e-3) -> torch.Tensor:
    """ω / (Δ² + ξ): SI's importance from the path integral ω = Σ −g·Δθ and the total change Δ
    (the one home of this formula; the observatory uses it too)."""
    if not xi > 0:
        raise ValueError(f"xi must be > 0, got {xi!r}")
    return path_integral / (delta ** 2 + xi)


class SynapticIntelligence(Rule):
    """SI on μ (mean mode). Uses task boundaries (see the module docstring)."""

    name = "si"
    uses_task_boundaries = True
    bounds = {"lr": ">0", "base": ("sgd", "adam"), "momentum": "[0,1)", "si_c": ">=0", "xi": ">0"}

    def __init__(self, model: nn.Module, lr: float = 0.01, base: str = "sgd", momentum: float = 0.0,
                 si_c: float = 0.1, xi: float = 1e-3):
        self.check_hyperparameters(locals())
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, base, lr, momentum), "mean",
                         dict(lr=lr, base=base, momentum=momentum, si_c=si_c, xi=xi))
        self.params = params
        self.si_c, self.xi = float(si_c), float(xi)
        self.omega = [torch.zeros_like(p) for p in params]
        self.importance = [torch.zeros_like(p) for p in params]
        self.anchor = [p.detach().clone() for p in params]
        self.tasks_consolidated = 0

    def penalty(self) -> torch.Tensor | None:
        if self.tasks_consolidated == 0 or self.si_c == 0:
            return None
        return self.si_c * sum((w * (p - a).pow(2)).sum() for p, w, a in zip(self.params, self.importance, self.anchor))

    @torch.no_grad()
    def step(self) -> None:
        before = [p.detach().clone() for p in self.params]
        grads = []
        for p, w, a in zip(self.params, self.importance, self.anchor):
            if p.grad is None:
                grads.append(None)
                continue
            g = p.grad.detach()
            if self.tasks_consolidated and self.si_c:
                g = g - 2.0 * self.si_c * w * (p.detach() - a)      # the data loss's gradient only
            grads.append(g.clone())
        self.checked_optimizer_step()
        for om, g, p, b in zip(self.omega, grads, self.params, before):
            if g is not None:
                om.sub_(g * (p.detach() - b))

    def end_task(self, task_index: int, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        with torch.no_grad():
            for om, w, a, p in zip(self.omega, self.importance, self.anchor, self.params):
                w.add_(si_importance(om, p - a, self.xi))
                om.zero_()
                a.copy_(p)
        self.tasks_consolidated += 1

    def extra_state(self) -> dict:
        return {"omega": [t.clone() for t in self.omega], "importance": [t.clone() for t in self.importance],
                "anchor": [t.clone() for t in self.anchor], "tasks_consolidated": self.tasks_consolidated}

    def load_extra_state(self, state: dict) -> None:
        for name in ("omega", "importance", "anchor"):
            for dst, src in zip(getattr(self, name), state[name]):
                dst.copy_(src)
        self.tasks_consolidated = int(state["tasks_consolidated"])
