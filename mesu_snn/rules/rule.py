"""``Rule``: what the trainer drives: a loss, an optimizer step, and (for the few rules that
are allowed to know them) a hook at task boundaries.

The trainer does, for every mini-batch (x, y) of a task-free stream::

    out = model(x, samples=M if rule.bayesian else 1)   # (M, B, C)
    loss = rule.loss(out, y)                          # data term (+ penalty)
    rule.zero_grad(); loss.backward(); rule.step()

and, only when ``rule.uses_task_boundaries`` (online EWC, SI), ``rule.end_task(k, batches)``
after the last batch of task k. MESU, BGD, SGD and Adam never get that call.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..bounds import check_number
from ..errors import NonFiniteStepError
from ..kernels.fused_update import all_finite
from ..losses import nll_loss
from ..synapses import bayesian_pairs, set_mode
from .bayes_optimizer import BayesianOptimizer

__all__ = ["Rule", "REDUCTIONS", "mean_mode_parameters", "make_base_optimizer"]

REDUCTIONS = ("sum", "mean")


class Rule:
    """A learning rule around a torch optimizer.

    bayesian: True: the model runs in sample mode, w = μ + σε, with M Monte-Carlo samples per
        update (MESU, BGD); False: mean mode, w = μ, σ frozen and unused (SGD, Adam, EWC, SI).
    reduction: how the negative log-likelihood is reduced over the batch: ``"sum"`` (MESU,
        told the batch size so that its memory N is in samples; BGD, as Zeno et al.'s code,
        which scales the mean-loss gradient by the batch size) or ``"mean"`` (the
        baselines, so that their papers' learning rates apply). Always averaged over samples.
    """

    name: str = "rule"
    bayesian: bool = False
    uses_task_boundaries: bool = False
    #: True: the rule computes its own gradient forward in time (eligibility traces); the trainer
    #: calls ``loss, out = rule.train_step(x, y, samples, generator)`` instead of backward
    online: bool = False
    #: bounds of the constructor's hyperparameters (:mod:`mesu_snn.bounds`: ">0", ">=0", ">=1",
    #: "[0,1]", "[0,1)", "real", "int>=1" or a tuple of allowed strings; always finite), checked
    #: at construction (:meth:`check_hyperparameters`) and by :mod:`mesu_snn.config`; a
    #: hyperparameter without an entry is "real"
    bounds: dict = {}
    #: hyperparameters that may also be None
    optional: tuple = ()

    @classmethod
    def check_hyperparameters(cls, args: dict) -> None:
        """Check the constructor's keyword arguments (``locals()`` at its top) against
        :attr:`bounds`; a ``ValueError`` names the first one out of range and the bound."""
        for k, v in args.items():
            if k in ("self", "model", "__class__") or (v is None and k in cls.optional):
                continue
            check_number(f"{cls.name}: {k}", v, cls.bounds.get(k, "real"))

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, reduction: str, hyperparameters: dict):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.model, self.optimizer, self.reduction = model, optimizer, reduction
        self.hyperparameters = dict(hyperparameters)

    def data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """NLL of the (M, B, C) outputs, averaged over samples, summed or averaged over the batch."""
        loss = nll_loss(out, y)
        self.last_batch_size = int(y.shape[0])   # B of the batch this loss covers (MESU's prior uses B/N)
        return loss / y.shape[0] if self.reduction == "mean" else loss

    def penalty(self) -> torch.Tensor | None:
        """Regulariser added to the data loss (EWC, SI); None for none."""
        return None

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.data_loss(out, y)
        pen = self.penalty()
        return loss if pen is None else loss + pen

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if isinstance(self.optimizer, BayesianOptimizer):
            self.optimizer.step()             # MESU/BGD check their own step before writing
        else:
            self.checked_optimizer_step()

    def checked_optimizer_step(self) -> None:
        """The base optimizer's step, refused whole if it would poison the model: a non-finite
        gradient, or a step that leaves any parameter non-finite (an lr far too large), raises
        :class:`~mesu_snn.errors.NonFiniteStepError` with the parameters *and* the optimizer's
        state (momentum, Adam moments) as they were before. (MESU and BGD check their own steps
        before writing, :mod:`mesu_snn.rules.bayes_optimizer`; this is the same guarantee for the
        mean-mode rules, whose torch optimizers update in place: a snapshot is restored.)"""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if not all_finite([p.grad for p in params]):
            raise NonFiniteStepError(f"{self.name}: non-finite gradient: step refused, parameters left untouched")
        saved = [p.detach().clone() for p in params]
        state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()}
                 for p in params if p in self.optimizer.state}
        self.optimizer.step()
        if all_finite(params):
            return
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        for p in params:
            if p in state:
                self.optimizer.state[p] = state[p]
            else:
                self.optimizer.state.pop(p, None)
        raise NonFiniteStepError(f"{self.name}: the step would make a parameter non-finite (lr too large for these "
                                 "gradients): step refused, parameters and optimizer state left as they were")

    def end_task(self, task_index: int, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Called after task ``task_index`` only if ``uses_task_boundaries``. ``batches()`` yields
        encoded (x (T, B, ...), y (B,)) batches of that task's training data."""

    # -- state for checkpoints ---------------------------------------------------------
    def extra_state(self) -> dict:
        """Tensors/numbers beyond the optimizer's state (importances, anchors)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"name": self.name, "optimizer": self.optimizer.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint holds the state of rule {state.get('name')!r}, not {self.name!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({hp})"


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
    check_number("lr", lr, ">0")
    if base == "sgd":
        check_number("momentum", momentum, "[0,1)")
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if base == "adam":
        if momentum:
            raise ValueError("momentum applies to base='sgd' only")
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"base must be 'sgd' or 'adam', got {base!r}")
