"""The one home of numeric bounds (bottom layer: imports nothing of mesu_snn).

A bound is a short string: ``">0"``, ``">=0"``, ``">=1"``, ``"[0,1]"``, ``"[0,1)"``, ``"real"``
(any finite number), ``"int>=1"``, ``"int>=0"``, or a tuple of allowed strings. Every numeric bound also
demands a *finite* value: NaN and ±Inf are never a valid hyperparameter. The rules declare
their bounds in ``Rule.bounds`` (:mod:`mesu_snn.rules`), the configuration reads them from
there (:mod:`mesu_snn.config`), and layers, neurons and optimizers check their numbers with
:func:`check_number`.
"""
from __future__ import annotations

import math

__all__ = ["BOUNDS", "check_number", "describe"]

#: bound -> (low, low open, high, high open, integer)
BOUNDS = {">0": (0.0, True, None, False, False), ">=0": (0.0, False, None, False, False),
          ">=1": (1.0, False, None, False, False), "[0,1]": (0.0, False, 1.0, False, False),
          "[0,1)": (0.0, False, 1.0, True, False), "real": (None, False, None, False, False),
          "int>=1": (1, False, None, False, True), "int>=0": (0, False, None, False, True)}


def describe(bound) -> str:
    """The bound in words, for messages: ``"a finite number > 0"``."""
    if isinstance(bound, tuple):
        return f"one of {', '.join(map(repr, bound))}"
    lo, lo_open, hi, hi_open, integer = BOUNDS[bound]
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    return kind


def _ok(x: float, bound) -> bool:
    lo, lo_open, hi, hi_open, _ = BOUNDS[bound]
    if not math.isfinite(x):
        return False
    if lo is not None and (x < lo or (lo_open and x == lo)):
        return False
    return not (hi is not None and (x > hi or (hi_open and x == hi)))


def check_number(name: str, value, bound, why: str = ""):
    """``value`` if it satisfies ``bound``, else a ``ValueError`` naming ``name``, the bound and
    ``why`` (the reason, appended). Tensors (per-synapse hyperparameters) are checked
    elementwise; the value is returned unchanged (ints stay ints, tensors stay tensors)."""
    reason = f" ({why})" if why else ""
    if isinstance(bound, tuple):
        if value not in bound:
            raise ValueError(f"{name} must be {describe(bound)}, got {value!r}{reason}")
        return value
    if bound not in BOUNDS:
        raise ValueError(f"unknown bound {bound!r} for {name}")
    integer = BOUNDS[bound][4]
    if hasattr(value, "detach") and hasattr(value, "dtype") and not integer:   # a tensor
        import torch
        v = value.detach().double()
        lo, lo_open, hi, hi_open, _ = BOUNDS[bound]
        ok = torch.isfinite(v)
        if lo is not None:
            ok &= (v > lo) if lo_open else (v >= lo)
        if hi is not None:
            ok &= (v < hi) if hi_open else (v <= hi)
        if not bool(ok.all()):
            first = v.flatten()[~ok.flatten()][0].item()
            raise ValueError(f"{name} must be {describe(bound)} everywhere, got {first!r} "
                             f"({int((~ok).sum())} of {v.numel()} elements out of range){reason}")
        return value
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{name} must be {describe(bound)}, got {value!r}{reason}")
    if not _ok(float(value), bound):
        raise ValueError(f"{name} must be {describe(bound)}, got {value!r}{reason}")
    return value
