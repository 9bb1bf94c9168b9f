"""Leaky integrate-and-fire neurons as pure functions (discrete time, one step = dt).

Membrane update for one step, with input current ``x_t`` (any shape ``S``)::

    v_t = v_leak + beta·(v_{t-1} − v_leak) + input_scale·x_t − (reset term)
    s_t = H(v_t − threshold)

Reset (``reset``): ``"subtract"`` removes ``threshold``; ``"zero"`` sets the membrane to
``v_reset``; ``"none"`` never resets. Timing (``reset_delay``):

* ``reset_delay=True`` (snnTorch ``Leaky`` default): the reset caused by a spike at t−1 is
  applied while computing ``v_t``; the returned membrane is the pre-reset value. snnTorch:
  ``v_t = beta·v_{t-1} + x_t − H(v_{t-1} − θ)·θ`` (subtract) or
  ``v_t = beta·(1 − H(v_{t-1} − θ))·v_{t-1} + x_t`` (zero).
* ``reset_delay=False`` (Norse): spike and reset at the same step; the returned membrane is
  the post-reset value.

``detach_reset`` stops gradients through the reset (snnTorch detaches, Norse does not).
Norse's ``LIFBoxCell`` (Euler step of ``dv/dt = (v_leak − v + i)/tau``) is
``beta = 1 − dt/tau``, ``input_scale = dt/tau``, ``reset="zero"``, ``reset_delay=False``,
``detach_reset=False``, surrogate fast-sigmoid slope 1, initial membrane ``v_leak``:
see :meth:`LIFParameters.norse_box`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Union

import torch

from .surrogate import FastSigmoid, Surrogate

Scalar = Union[float, torch.Tensor]

__all__ = ["LIFParameters", "lif_step", "lif_sequence", "initial_membrane"]

RESETS = ("subtract", "zero", "none")


@dataclass(frozen=True)
class LIFParameters:
    """Parameters of a LIF population. Tensors broadcast against the neuron shape.

    beta: membrane decay per step, in [0, 1] (clamped like snnTorch). threshold: firing
    threshold (membrane units). v_leak, v_reset: leak and reset potentials. input_scale:
    gain on the input current.
    """

    beta: Scalar = 0.9
    threshold: Scalar = 1.0
    reset: str = "subtract"
    reset_delay: bool = True
    detach_reset: bool = True
    v_leak: Scalar = 0.0
    v_reset: Scalar = 0.0
    input_scale: Scalar = 1.0
    surrogate: Surrogate = field(default_factory=FastSigmoid)

    def __post_init__(self):
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")

    @classmethod
    def norse_box(cls, tau_mem_inv: Scalar = 100.0, v_leak: Scalar = 0.0, v_th: Scalar = 1.0,
                  v_reset: Scalar = 0.0, dt: float = 1e-3) -> "LIFParameters":
        """The parameters that make :func:`lif_step` equal Norse's ``LIFBoxCell``
        (``tau_mem_inv`` in 1/s, ``dt`` in s; Norse's default surrogate ``"super"``)."""
        k = dt * tau_mem_inv
        return cls(beta=1.0 - k, threshold=v_th, reset="zero", reset_delay=False,
                   detach_reset=False, v_leak=v_leak, v_reset=v_reset, input_scale=k,
                   surrogate=FastSigmoid(1.0))

    def with_(self, **changes) -> "LIFParameters":
        return replace(self, **changes)


def _beta(p: LIFParameters) -> Scalar:
    b = p.beta
    return b.clamp(0.0, 1.0) if isinstance(b, torch.Tensor) else min(max(float(b), 0.0), 1.0)


def _is_zero(v: Scalar) -> bool:
    return not isinstance(v, torch.Tensor) and float(v) == 0.0


def initial_membrane(x: torch.Tensor, p: LIFParameters) -> torch.Tensor:
    """Resting membrane (``v_leak``) with the shape, dtype and device of one input step ``x``."""
    v0 = torch.zeros_like(x)
    return v0 if _is_zero(p.v_leak) else v0 + p.v_leak


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """One LIF step. x: input current (S), v: membrane (S) -> (spikes (S), new membrane (S))."""
    beta = _beta(p)
    unit_gain = not isinstance(p.input_scale, torch.Tensor) and float(p.input_scale) == 1.0
    drive = x if unit_gain else p.input_scale * x
    leak = 0.0 if _is_zero(p.v_leak) else p.v_leak
    if p.reset_delay and p.reset != "none":
        r = p.surrogate(v - p.threshold)
        r = r.detach() if p.detach_reset else r
        if p.reset == "subtract":
            v_new = leak + beta * (v - leak) + drive - r * p.threshold
        else:  # zero: membrane set to v_reset before the decay, as snnTorch does
            v_pre = (1 - r) * v + r * p.v_reset
            v_new = leak + beta * (v_pre - leak) + drive
        return p.surrogate(v_new - p.threshold), v_new
    v_new = leak + beta * (v - leak) + drive
    s = p.surrogate(v_new - p.threshold)
    if p.reset == "none":
        return s, v_new
    r = s.detach() if p.detach_reset else s
    if p.reset == "subtract":
        v_new = v_new - r * p.threshold
    else:
        v_new = (1 - r) * v_new + r * p.v_reset
    return s, v_new


def lif_sequence(x: torch.Tensor, p: LIFParameters, v0: torch.Tensor | None = None,
                 return_membrane: bool = False):
    """Run LIF over time: the plain loop of :func:`lif_step` (the definition).

    x: (T, *S) currents -> spikes (T, *S) [and membranes (T, *S)]. v0 (S) is the initial
    membrane (default: :func:`initial_membrane`). The fast twin is
    :func:`mesu_snn.kernels.lif_sequence_fused` (same spikes, gradients equal to rounding);
    :class:`mesu_snn.LIF` chooses between them."""
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"lif_sequence expects a (T, ...) tensor with T >= 1, got shape {tuple(x.shape)}")
    v = initial_membrane(x[0], p) if v0 is None else v0
    spikes, mems = [], []
    for t in range(x.shape[0]):
        s, v = lif_step(x[t], v, p)
        spikes.append(s)
        if return_membrane:
            mems.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(mems)) if return_membrane else out
