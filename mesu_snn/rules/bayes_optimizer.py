"""Shared machinery of the Bayesian update rules: finding (μ, σ) pairs, the non-finite
gradient guard, and applying a pure update function to every pair.

Parameter groups. Each group's ``params`` list holds its pairs flattened as
[μ₀, σ₀, μ₁, σ₁, …] (kind ``"bayes"``); ``names`` holds the pairs' qualified names.
Non-Bayesian trainable parameters of a model (biases of plain layers, learnable LIF beta, …)
are refused with a ``ValueError`` that lists them, unless ``other_lr`` is given: then they
form one group of kind ``"plain"`` updated by plain SGD, p ← p − other_lr·∂C/∂p.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..errors import NonFiniteStepError
from ..kernels import native
from ..kernels.fused_update import all_finite, values_ok
from ..kernels.switch import fast_paths_enabled, native_enabled
from ..synapses import bayesian_pairs

NONFINITE = ("raise", "skip")


def _param_names(g: dict) -> list[str]:
    """Names of ``g["params"]`` in order: plain names, or ``<pair>_mu``, ``<pair>_sigma``."""
    return g["names"] if g["kind"] == "plain" else [n + s for n in g["names"] for s in ("_mu", "_sigma")]


def _groups_from(params, other_lr) -> list[dict]:
    if isinstance(params, nn.Module):
        pairs = bayesian_pairs(params)
        if not pairs:
            raise ValueError(f"{type(params).__name__} has no Bayesian layers (weight_mu/weight_sigma); "
                             "use mesu_snn.bayesianize(model) first")
        ids = {id(p) for _, mu, s in pairs for p in (mu, s)}
        others = [(n, p) for n, p in params.named_parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": [p for _, mu, s in pairs for p in (mu, s)], "names": [n for n, _, _ in pairs],
                   "kind": "bayes"}]
        if others:
            if other_lr is None:
                raise ValueError("the model has non-Bayesian trainable parameters "
                                 f"{[n for n, _ in others]}; MESU/BGD update only (μ, σ) pairs. Pass other_lr=... "
                                 "to train them by plain SGD, or freeze them (requires_grad=False)")
            groups.append({"params": [p for _, p in others], "names": [n for n, _ in others], "kind": "plain",
                           "lr": float(other_lr)})
        return groups
    params = list(params)
    if not params:
        raise ValueError("empty parameter list")
    if all(isinstance(g, dict) for g in params):
        groups = []
        for i, g in enumerate(params):
            g = dict(g)
            if "kind" in g and "pairs" not in g:   # already in the internal form (MESU's per-pair priors)
                groups.append(g)
                continue
            if "pairs" not in g:
                raise ValueError(f"parameter group {i} needs a 'pairs' entry: a list of (mu, sigma) tensors")
            pairs = list(g.pop("pairs"))
            g.update(params=[p for pair in pairs for p in pair], names=[f"group{i}.pair{j}" for j in range(len(pairs))],
                     kind="bayes")
            groups.append(g)
        return groups
    if all(isinstance(p, (tuple, list)) and len(p) == 2 for p in params):
        return [{"params": [t for pair in params for t in pair], "names": [f"pair{j}" for j in range(len(params))],
                 "kind": "bayes"}]
    raise ValueError("pass a model with Bayesian layers, a list of (mu, sigma) pairs, or a list of dicts with "
                     "'pairs'; a flat parameter list cannot say which tensor is whose σ")


def _tensors_key(ps: list) -> tuple | None:
    """Identity, storage address and strides of every parameter and its gradient (None if one has none)."""
    key = []
    for p in ps:
        g = p.grad
        if g is None:
            return None
        key.append((id(p), p.data_ptr(), p.stride(), id(g), g.data_ptr(), g.stride()))
    return tuple(key)


class BayesianOptimizer(torch.optim.Optimizer):
    """Base of MESU and BGD: subclasses give ``_update(mu, sigma, gmu, gsigma, group)``."""

    def __init__(self, params, defaults: dict, other_lr: float | None = None, on_nonfinite: str = "raise"):
        if on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        groups = _groups_from(params, other_lr)
        for g in groups:
            if g["kind"] == "bayes":
                ps = g["params"]
                for mu, s in zip(ps[0::2], ps[1::2]):
                    if mu.shape != s.shape:
                        raise ValueError(f"μ and σ shapes differ: {tuple(mu.shape)} vs {tuple(s.shape)}")
                    if not bool(torch.all(s > 0)):
                        raise ValueError("every σ must be > 0 at construction")
        super().__init__(groups, dict(defaults, step=0))
        for g in self.param_groups:
            self._check_group(g)

    def _check_group(self, g: dict) -> None:  # overridden to validate hyperparameters
        pass

    def pairs(self) -> Iterable[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, μ, σ) of every pair handled."""
        for g in self.param_groups:
            if g["kind"] == "bayes":
                ps = g["params"]
                yield from zip(g["names"], ps[0::2], ps[1::2])

    def _grads_finite(self) -> str | None:
        """Name of the first parameter whose gradient holds NaN/Inf, else None (one sum per
        gradient and one host sync when all are finite; a per-tensor scan otherwise)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if all_finite(grads):
            return None
        for g in self.param_groups:
            for name, p in zip(_param_names(g), g["params"]):
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    return name
        return None

    def _update(self, mu, sigma, gmu, gsigma, group) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # The subclass's ``_fused_new`` (all pairs of a group in one pass of foreach ops,
    # :mod:`mesu_snn.kernels.fused_update`) runs while :func:`mesu_snn.kernels.fast_paths` is on;
    # ``with fast_paths(False):`` runs the readable per-pair ``_update`` (the pure functions of
    # :mod:`mesu_snn.functional`). Both give the same result to floating-point rounding.

    def _fused_new(self, mus, sigmas, gmus, gsigmas, group) -> tuple[list, list] | None:
        """Optional: the group's new (μ list, σ list), nothing modified; None to use ``_update``."""
        raise NotImplementedError

    def _native_args(self, group) -> tuple | None:
        """Optional: the constants of the compiled update (:mod:`mesu_snn.kernels.native`) for this
        group, or None to use the torch code."""
        return None

    def _native_step(self) -> bool:
        """The whole step (guard and update) in two compiled calls when every tensor is a contiguous
        CPU tensor of one dtype with a gradient, and every group has :meth:`_native_args`; returns
        False (nothing done) otherwise, and also when a gradient is not finite or the step would
        make a μ non-finite or a σ non-finite or ≤ 0 (the torch code then names it and raises or
        skips)."""
        groups = self.param_groups
        ps = [p for g in groups for p in g["params"]]
        cached = getattr(self, "_native_cache", None)
        if cached is not None and cached[0] == _tensors_key(ps):
            # the very tensors (same objects, storage and strides) checked and pointed to last time
            if len(groups) == 1:
                args = self._native_args(groups[0])
                if args is not None and args[0] == "mesu_pairs":
                    fn, ptrs, sizes, n = cached[2]
                    if not fn(ptrs, sizes, n, *args[1:]):
                        return False
                    groups[0]["step"] += 1
                    return True
            else:
                args = [self._native_args(g) for g in groups]
                if all(a is not None and a[0] == "mesu_pairs" for a in args):
                    return self._native_groups(groups, cached[2], args)
        self._native_cache = None
        if not ps or any(g["kind"] != "bayes" for g in groups):
            return False
        sfx = native.suffix(ps[0])
        if sfx is None:
            return False
        dt = ps[0].dtype
        for p in ps:
            gr = p.grad
            if gr is None or p.dtype != dt or gr.dtype != dt or gr.device.type != "cpu" or \
                    not (p.is_contiguous() and gr.is_contiguous()):
                return False
        args = [self._native_args(g) for g in groups]
        if any(a is None for a in args):
            return False
        lib = native.library()
        if lib is None:
            return False
        if len(groups) == 1 and args[0][0] == "mesu_pairs":
            # one group: guard and update in one call over one pointer array [μ…, σ…, ∂μ…, ∂σ…]
            g = groups[0]
            gp = g["params"]
            mus, sigmas = gp[0::2], gp[1::2]
            tensors = mus + sigmas + [p.grad for p in mus] + [p.grad for p in sigmas]
            ptrs, sizes, _ = native.pointers(tensors)
            fn = getattr(lib, f"mesu_step_{sfx}")
            # kept with references to the tensors, so that their ids stay theirs while cached
            self._native_cache = (_tensors_key(ps), tensors, (fn, ptrs, sizes, len(mus)))
            if not fn(ptrs, sizes, len(mus), *args[0][1:]):
                return False
            g["step"] += 1
            return True
        if all(a[0] == "mesu_pairs" for a in args):
            # several MESU groups (e.g. sigma_prior="init": one per layer): the pointer arrays kept, as above
            calls = []
            for g in groups:
                gp = g["params"]
                mus, sigmas = gp[0::2], gp[1::2]
                pm, sz, k = native.pointers(mus)
                calls.append((getattr(lib, f"mesu_pairs_{sfx}"), pm, native.pointers(sigmas)[0],
                              native.pointers([p.grad for p in mus])[0], native.pointers([p.grad for p in sigmas])[0],
                              sz, k))
            self._native_cache = (_tensors_key(ps), [p for p in ps] + [p.grad for p in ps], calls)
            return self._native_groups(groups, calls, args)
        ptrs, sizes, n = native.pointers([p.grad for p in ps])
        if not getattr(lib, f"all_finite_{sfx}")(ptrs, sizes, n):
            return False
        calls = []
        for g, a in zip(groups, args):
            gp = g["params"]
            mus, sigmas = gp[0::2], gp[1::2]
            pm, sz, k = native.pointers(mus)
            psg, _, _ = native.pointers(sigmas)
            pgm, _, _ = native.pointers([p.grad for p in mus])
            pgs, _, _ = native.pointers([p.grad for p in sigmas])
            calls.append((getattr(lib, f"{a[0]}_{sfx}"), (pm, psg, pgm, pgs, sz, k, *a[1:])))
        # first check every group's new values (nothing written), then write: a step that would
        # poison any μ or σ changes nothing, and the torch code below names it and refuses it
        if not all(f(*c, 0) for f, c in calls):
            return False
        for g, (f, c) in zip(groups, calls):
            g["step"] += 1
            f(*c, 1)
        return True

    @staticmethod
    def _native_groups(groups, calls, args) -> bool:
        """Every group's compiled MESU update: first every group's check pass (gradients finite, new μ
        finite, new σ finite and > 0; nothing written), then every group's write pass, so that a step
        that would poison any μ or σ changes nothing."""
        for (fn, pm, psg, pgm, pgs, sz, k), a in zip(calls, args):
            if not fn(pm, psg, pgm, pgs, sz, k, *a[1:], 0):
                return False
        for g, (fn, pm, psg, pgm, pgs, sz, k), a in zip(groups, calls, args):
            g["step"] += 1
            fn(pm, psg, pgm, pgs, sz, k, *a[1:], 1)
        return True

    def _new_values(self, g: dict) -> list[torch.Tensor]:
        """What one step would write into ``g["params"]`` (same order), nothing modified."""
        ps = g["params"]
        if g["kind"] == "plain":
            return [p if p.grad is None else torch.add(p, p.grad, alpha=-g["lr"]) for p in ps]
        if fast_paths_enabled() and type(self)._fused_new is not BayesianOptimizer._fused_new:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
            new = self._fused_new(ps[0::2], ps[1::2], grads[0::2], grads[1::2], g)
            if new is not None:
                return [t for pair in zip(*new) for t in pair]
        out = []
        for mu, sigma in zip(ps[0::2], ps[1::2]):
            gmu = mu.grad if mu.grad is not None else torch.zeros_like(mu)
            gs = sigma.grad if sigma.grad is not None else torch.zeros_like(sigma)
            out += list(self._update(mu, sigma, gmu, gs, g))
        return out

    def _bad_new_value(self, new: list[list[torch.Tensor]]) -> str | None:
        """None if every new μ (and plain parameter) is finite and every new σ finite and > 0
        (one min/max pass per tensor, one host sync), else what is wrong, naming the tensor."""
        finite, positive = [], []
        for g, vals in zip(self.param_groups, new):
            if g["kind"] == "plain":
                finite += vals
            else:
                finite += vals[0::2]
                positive += vals[1::2]
        if values_ok(finite, positive):
            return None
        for g, vals in zip(self.param_groups, new):
            for i, (name, v) in enumerate(zip(_param_names(g), vals)):
                if not bool(torch.isfinite(v).all()):
                    return f"{name} non-finite"
                if g["kind"] == "bayes" and i % 2 == 1 and not bool((v > 0).all()):
                    return f"{name} <= 0 (smallest new value {float(v.min()):.3g})"
        return None

    def _refuse(self, what: str, loss):
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            return loss
        raise NonFiniteStepError(f"{what}: step refused, μ and σ left untouched "
                                 "(pass on_nonfinite='skip' to skip such steps and count them)")

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every group, all or nothing: the new μ and σ are computed into new
        tensors and checked (finite, σ > 0) before any parameter is written. A step whose
        gradients or results fail the check raises :class:`~mesu_snn.errors.NonFiniteStepError`
        naming the tensor, or with ``on_nonfinite="skip"`` is skipped and counted; either way
        nothing changes (not even the step counters)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if fast_paths_enabled() and native_enabled() and self._native_step():
            return loss
        bad = self._grads_finite()
        if bad is not None:
            return self._refuse(f"non-finite gradient in {bad}", loss)
        new = [self._new_values(g) for g in self.param_groups]
        bad = self._bad_new_value(new)
        if bad is not None:
            return self._refuse(f"the step would make {bad} (the hyperparameters are too large for these "
                                "gradients: lower lr_mu/lr_sigma/lr or raise memory)", loss)
        for g, vals in zip(self.param_groups, new):
            g["step"] += 1
            torch._foreach_copy_(g["params"], vals)
        return loss

    def state_dict(self):
        sd = super().state_dict()
        sd["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        skipped = int(state_dict.pop("skipped_steps", 0))
        saved = [dict(g) for g in self.param_groups]
        super().load_state_dict(state_dict)
        try:                       # a loaded hyperparameter is checked like a constructor's
            for g in self.param_groups:
                self._check_group(g)
        except ValueError as e:
            for g, old in zip(self.param_groups, saved):
                g.update(old)
            raise ValueError(f"the optimizer state holds an invalid hyperparameter: {e}") from None
        self.skipped_steps = skipped
