"""Shared machinery of the Bayesian update rules: finding (μ, σ) pairs, the non-finite
gradient guard, and applying a pure update function to every pair.

Parameter groups. Each group's ``params`` list holds its pairs flattened as
[μ₀, σ₀, μ₁, σ₁, …] (kind ``"bayes"``); ``names`` holds the pairs' qualified names.
Non-Bayesian trainable parameters of a model (biases of plain layers, learnable LIF beta, …)
are refused with a ``ValueError`` that lists them, unless ``other_lr`` is given: then they
form one group of kind ``"plain"`` updated by plain SGD, p ← p − other_lr·∂C/∂p.

Per-layer hyperparameters. ``per_layer={pattern: {hyperparameter: value}}`` moves the pairs
whose name matches ``pattern`` into a group of their own with those values (the rest keep the
constructor's): a pattern matches a pair ``layers.1.weight`` if it is a module name it lies in
(``"layers.1"``) or an :func:`fnmatch` pattern of the whole name (``"layers.1.*"``, ``"*.weight"``).
A pattern that matches no pair, a pair matched by two patterns, or a key the rule does not have
is a ``ValueError`` naming it; the group keeps its pattern under ``"layer"``.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Mapping

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


def _layer_matches(pattern: str, name: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _split_per_layer(groups: list[dict], per_layer: Mapping | None, allowed: Iterable[str]) -> list[dict]:
    """The groups with the pairs each ``per_layer`` pattern matches moved into a group of their own
    that carries the pattern's hyperparameters (module docstring)."""
    if per_layer is None:
        return groups
    if not isinstance(per_layer, Mapping):
        raise ValueError(f"per_layer must be a mapping {{layer pattern: {{hyperparameter: value}}}}, "
                         f"got {type(per_layer).__name__}")
    allowed = sorted(allowed)
    for pat, hp in per_layer.items():
        if not isinstance(pat, str) or not pat:
            raise ValueError(f"per_layer: a layer pattern must be a non-empty string, got {pat!r}")
        if not isinstance(hp, Mapping) or not hp:
            raise ValueError(f"per_layer[{pat!r}] must be a non-empty mapping of hyperparameters, got {hp!r}")
        bad = sorted(set(hp) - set(allowed))
        if bad:
            raise ValueError(f"per_layer[{pat!r}]: unknown hyperparameter(s) {', '.join(map(str, bad))} "
                             f"(per-layer ones: {', '.join(allowed)})")
    names = [n for g in groups if g["kind"] == "bayes" for n in g["names"]]
    for pat in per_layer:
        if not any(_layer_matches(pat, n) for n in names):
            raise ValueError(f"per_layer[{pat!r}] matches no Bayesian layer (their weights and biases: "
                             f"{', '.join(names)})")
    out = []
    for g in groups:
        if g["kind"] != "bayes":
            out.append(g)
            continue
        rest = {k: v for k, v in g.items() if k not in ("params", "names")}
        keep = {"params": [], "names": []}
        moved: dict[str, dict] = {}
        ps = g["params"]
        for name, mu, s in zip(g["names"], ps[0::2], ps[1::2]):
            hits = [pat for pat in per_layer if _layer_matches(pat, name)]
            if len(hits) > 1:
                raise ValueError(f"per_layer: {name} is matched by more than one pattern ({', '.join(hits)}); "
                                 "make them exclusive")
            dst = keep if not hits else moved.setdefault(
                hits[0], {**rest, **dict(per_layer[hits[0]]), "layer": hits[0], "params": [], "names": []})
            dst["params"] += [mu, s]
            dst["names"].append(name)
        if keep["names"]:
            out.append({**rest, **keep})
        out.extend(moved.values())
    return out


class BayesianOptimizer(torch.optim.Optimizer):
    """Base of MESU and BGD: subclasses give ``_update(mu, sigma, gmu, gsigma, group)``."""

    #: hyperparameters ``per_layer`` may set (subclasses: those of their update)
    layer_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, other_lr: float | None = None, on_nonfinite: str = "raise",
                 per_layer: Mapping | None = None):
        if on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        groups = _split_per_layer(_groups_from(params, other_lr), per_layer, self.layer_keys)
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
            try:
                self._check_group(g)
            except ValueError as e:
                if "layer" not in g:
                    raise
                raise ValueError(f"per_layer[{g['layer']!r}]: {e}") from None

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
        theirs = state_dict.get("param_groups", [])
        mine = [(g.get("layer"), len(g["params"])) for g in self.param_groups]
        if len(theirs) != len(mine) or any(len(t.get("params", ())) != n for t, (_, n) in zip(theirs, mine)):
            def show(gs):
                return "; ".join(f"{g.get('layer') or g.get('kind', 'bayes')}: {len(g.get('params', ()))} tensors"
                                 for g in gs)
            raise ValueError(f"the optimizer state has {len(theirs)} parameter group(s) [{show(theirs)}], this "
                             f"optimizer {len(mine)} [{show(self.param_groups)}]: build it as the saved one was "
                             "(the same model, per_layer and sigma_prior='init' or not)")
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
