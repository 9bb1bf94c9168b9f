"""Surrogate spike functions: a Heaviside step forward, a smooth derivative backward.

The forward pass is ``spike = (x > 0)`` (x = membrane − threshold), exactly as in
snnTorch and Norse. The backward passes equal snnTorch's:

* fast sigmoid (Zenke & Ganguli's SuperSpike form): ``dS/dx = 1 / (slope·|x| + 1)²``
  (snnTorch ``surrogate.fast_sigmoid(slope)``; Norse's ``"super"`` method is slope = 1,
  because Norse 1.1.0's SuperSpike backward ignores its ``alpha``);
* arctan: ``dS/dx = (alpha/2) / (1 + (π/2·alpha·x)²)`` (snnTorch ``surrogate.atan(alpha)``).

A surrogate is a small frozen dataclass; call it on a tensor to get spikes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["FastSigmoid", "ATan", "Heaviside", "Surrogate", "make_surrogate"]


class _FastSigmoidFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * x.abs() + 1.0) ** 2, None


class _ATanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return a / 2 / (1 + (math.pi / 2 * a * x) ** 2) * grad, None


class _StraightThroughFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


@dataclass(frozen=True)
class FastSigmoid:
    """Heaviside forward, ``1/(slope·|x|+1)²`` backward. ``slope`` is dimensionless (per unit membrane)."""

    slope: float = 25.0

    def __post_init__(self):
        if not self.slope > 0:
            raise ValueError(f"FastSigmoid slope must be > 0, got {self.slope}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _FastSigmoidFn.apply(x, float(self.slope))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """dS/dx at x (no autograd): the derivative the backward applies (e.g. for eligibility traces)."""
        return 1.0 / (self.slope * x.abs() + 1.0) ** 2


@dataclass(frozen=True)
class ATan:
    """Heaviside forward, ``(alpha/2)/(1+(π/2·alpha·x)²)`` backward."""

    alpha: float = 2.0

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"ATan alpha must be > 0, got {self.alpha}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _ATanFn.apply(x, float(self.alpha))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return a / 2 / (1 + (math.pi / 2 * a * x) ** 2)


@dataclass(frozen=True)
class Heaviside:
    """Heaviside forward with a straight-through (identity) backward."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThroughFn.apply(x)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


Surrogate = FastSigmoid | ATan | Heaviside


#: surrogate names a config may give (their default parameters)
SURROGATES = ("fast_sigmoid", "atan")


def make_surrogate(spec) -> Surrogate:
    """A surrogate from an instance, a name (``"fast_sigmoid"``, ``"atan"``, ``"heaviside"``)
    or a ``(name, value)`` pair such as ``("fast_sigmoid", 25.0)``."""
    if isinstance(spec, (FastSigmoid, ATan, Heaviside)):
        return spec
    name, value = (spec, None) if isinstance(spec, str) else tuple(spec)
    table = {"fast_sigmoid": FastSigmoid, "superspike": FastSigmoid, "atan": ATan, "arctan": ATan}
    if name == "heaviside":
        return Heaviside()
    if name not in table:
        raise ValueError(f"unknown surrogate {name!r}; expected one of fast_sigmoid, atan, heaviside")
    return table[name]() if value is None else table[name](float(value))
