"""Fused multi-step LIF: the whole (T, ...) sequence as one autograd node.

Same equations as :func:`mesu_snn.functional.lif.lif_sequence` (read them there), for the
common configurations: scalar ``beta``, ``threshold``, ``v_leak``, ``v_reset`` and
``input_scale`` (Python numbers), any ``reset`` ("subtract", "zero", "none"), both reset
timings (``reset_delay``), ``detach_reset`` on or off, and the FastSigmoid / ATan / Heaviside
surrogates. :func:`supports` says whether a configuration qualifies.

Forward: a loop over time that writes into preallocated outputs, without autograd
bookkeeping; the spikes equal the reference bit for bit (the same floating-point
operations in the same order). Backward: the surrogate derivative of every step is computed
in one vectorised pass, then the gradient runs back through time as a linear recurrence
``g_t = A_t + C_t · g_{t+1}`` (one in-place op per step).

Memory: only the pre-reset membrane ``u`` (T, ...) is saved (4 bytes per neuron-step in
fp32). Spikes (``u > θ``) and the post-reset membrane are recomputed from it in backward.
This is cheaper than saving the input currents plus a spike bit mask (5 bytes) and needs no
re-run of the forward recurrence; the reference path saves about twice as much.

The backward is not itself differentiable (double backward raises): for Hessian-vector
products use ``with fast_paths(False):`` (the reference loop).

Under ``torch.compile`` the function traces the reference loop instead (inductor then fuses
the time loop into one kernel); see :func:`lif_sequence_fused`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ..functional.lif import LIFParameters, _beta, lif_sequence
from ..functional.surrogate import ATan, FastSigmoid, Heaviside
from . import native
from .switch import native_enabled

__all__ = ["supports", "lif_sequence_fused", "LIFConfig", "lif_config", "lif_forward", "lif_backward"]

class LIFConfig(NamedTuple):
    """Plain-number LIF configuration used by the fused kernel."""

    beta: float
    threshold: float
    reset: str
    reset_delay: bool
    detach_reset: bool
    v_leak: float
    v_reset: float
    input_scale: float
    surrogate: object


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def supports(p: LIFParameters) -> bool:
    """True if the fused kernel handles ``p`` (all scalars plain numbers, a known surrogate)."""
    scalars = (p.beta, p.threshold, p.v_leak, p.v_reset, p.input_scale)
    return all(_number(v) for v in scalars) and isinstance(p.surrogate, (FastSigmoid, ATan, Heaviside))


def _config(p: LIFParameters) -> LIFConfig:
    return LIFConfig(float(_beta(p)), float(p.threshold), p.reset, bool(p.reset_delay), bool(p.detach_reset),
                     float(p.v_leak), float(p.v_reset), float(p.input_scale), p.surrogate)


def lif_config(p: LIFParameters) -> LIFConfig:
    """The plain-number configuration the kernels run (``supports(p)`` must hold)."""
    return _config(p)


def lif_forward(x: torch.Tensor, c: LIFConfig, v0: torch.Tensor | None = None,
                time_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of the fused sequence without autograd: currents -> (spikes, pre-reset membranes u),
    both shaped like x (u is what :func:`lif_backward` needs)."""
    return _forward(x, c, v0, time_dim)


def _surrogate_grad(sur, z: torch.Tensor) -> torch.Tensor:
    """dS/dz for the whole tensor z = u − θ, computed in place on z (z is a temporary)."""
    if isinstance(sur, FastSigmoid):
        return z.abs_().mul_(sur.slope).add_(1.0).square_().reciprocal_()
    if isinstance(sur, ATan):
        a = sur.alpha
        return z.mul_(math.pi / 2 * a).square_().add_(1.0).reciprocal_().mul_(a / 2)
    return torch.ones_like(z)


def _decay_into(out: torch.Tensor, v: torch.Tensor, c: LIFConfig) -> torch.Tensor:
    """out = v_leak + beta·(v − v_leak), with the reference's rounding order."""
    if c.v_leak == 0.0:
        return torch.mul(v, c.beta, out=out)
    torch.sub(v, c.v_leak, out=out)
    return out.mul_(c.beta).add_(c.v_leak)


_RESET_CODE = {"subtract": 0, "zero": 1, "none": 2}


def _native_lib(x: torch.Tensor):
    """The compiled library and dtype suffix if the native loops may run on x, else (None, None)."""
    if not native_enabled():
        return None, None
    sfx = native.suffix(x)
    if sfx is None:
        return None, None
    lib = native.library()
    return (lib, sfx) if lib is not None else (None, None)


def _otI(shape, time_dim: int):
    o = 1
    for n in shape[:time_dim]:
        o *= n
    i = 1
    for n in shape[time_dim + 1:]:
        i *= n
    return o, shape[time_dim], i


def _forward_native(lib, sfx, x, c: LIFConfig, v0, time_dim: int):
    """:func:`_forward` in one compiled pass (same float operations, same order: equal bit for bit)."""
    x = x.contiguous()
    spikes, u = torch.empty_like(x), torch.empty_like(x)
    o, t, i = _otI(x.shape, time_dim)
    v0c = None
    if v0 is not None:
        step_shape = x.shape[:time_dim] + x.shape[time_dim + 1:]
        v0c = v0.detach().to(x.dtype).expand(step_shape).contiguous()
    rc = getattr(lib, f"lif_forward_{sfx}")(x.data_ptr(), None if v0c is None else v0c.data_ptr(), spikes.data_ptr(),
                                            u.data_ptr(), o, t, i, c.beta, c.threshold, _RESET_CODE[c.reset],
                                            int(c.reset_delay), c.v_leak, c.v_reset, c.input_scale)
    if rc != 0:
        raise MemoryError("lif_forward (native) could not allocate its state")
    return spikes, u


def _surrogate_code(sur):
    if isinstance(sur, FastSigmoid):
        return 0, float(sur.slope)
    if isinstance(sur, ATan):
        return 1, float(sur.alpha)
    return 2, 0.0


def _forward(x: torch.Tensor, c: LIFConfig, v0: torch.Tensor | None, time_dim: int):
    """Run the recurrence. Returns (spikes, pre-reset membranes u), both shaped like x."""
    lib, sfx = _native_lib(x)
    if lib is not None and (v0 is None or v0.dtype == x.dtype):
        return _forward_native(lib, sfx, x, c, v0, time_dim)
    xt = x.movedim(time_dim, 0)
    drive = xt if c.input_scale == 1.0 else xt * c.input_scale
    # outputs in x's memory layout, so that every per-step op runs on matching strides
    spikes = torch.empty_like(x)
    u = torch.empty_like(x)
    st, ut = spikes.movedim(time_dim, 0), u.movedim(time_dim, 0)
    if v0 is None:
        v = torch.full_like(xt[0], c.v_leak)
    else:
        v = v0.detach().expand_as(xt[0])
    delayed = c.reset_delay and c.reset != "none"
    r = torch.gt(v, c.threshold).to(x.dtype) if delayed else None   # reset due to the initial membrane
    for ut_t, st_t, d_t in zip(ut.unbind(0), st.unbind(0), drive.unbind(0)):
        if delayed and c.reset == "zero":
            _decay_into(ut_t, torch.where(r.bool(), c.v_reset, v), c)
        else:
            _decay_into(ut_t, v, c)
        ut_t.add_(d_t)
        if delayed and c.reset == "subtract":
            ut_t.sub_(r, alpha=c.threshold)
        s_t = torch.gt(ut_t, c.threshold, out=st_t)
        if c.reset_delay or c.reset == "none":
            v, r = ut_t, s_t
        elif c.reset == "subtract":
            v = ut_t - s_t * c.threshold
        else:
            v = torch.where(s_t.bool(), c.v_reset, ut_t)
    return spikes, u


def _post_reset(u: torch.Tensor, s: torch.Tensor, c: LIFConfig) -> torch.Tensor:
    """Post-reset membrane of the immediate-reset model, from u and spikes s (float)."""
    if c.reset == "subtract":
        return u - s * c.threshold
    if c.reset == "zero":
        return torch.where(s.bool(), c.v_reset, u)
    return u


def _reset_factor(u: torch.Tensor, s: torch.Tensor, sg: torch.Tensor, c: LIFConfig):
    """d(post-reset membrane)/du elementwise (a float when it is the constant 1)."""
    if c.reset == "none":
        return 1.0
    if c.reset == "subtract":
        return 1.0 if c.detach_reset else 1.0 - c.threshold * sg
    keep = 1.0 - s
    return keep if c.detach_reset else keep + (c.v_reset - u) * sg


class _LIFSequenceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, c: LIFConfig, time_dim: int, return_membrane: bool):
        spikes, u = _forward(x, c, v0, time_dim)
        ctx.c, ctx.time_dim, ctx.has_v0 = c, time_dim, v0 is not None
        ctx.save_for_backward(u, v0 if v0 is not None else u.new_empty(0))
        ctx.return_membrane = return_membrane
        if not return_membrane:
            return spikes
        mem = u if c.reset_delay or c.reset == "none" else _post_reset(u, spikes, c)
        return spikes, mem

    @staticmethod
    @once_differentiable
    def backward(ctx, g_spikes, g_mem=None):
        u, v0 = ctx.saved_tensors
        g_x, g_v0 = lif_backward(u, v0 if ctx.has_v0 else None, g_spikes, g_mem, ctx.c, ctx.time_dim,
                                 need_v0=ctx.needs_input_grad[1])
        return g_x, g_v0, None, None, None


def lif_backward(u: torch.Tensor, v0: torch.Tensor | None, g_spikes: torch.Tensor, g_mem: torch.Tensor | None,
                 c: LIFConfig, time_dim: int, need_v0: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backward of the fused sequence (:class:`_LIFSequenceFn`), callable without autograd:
    u the pre-reset membranes its forward (:func:`lif_forward`) returned, the gradients of the spikes
    and (or None) of the returned membranes -> (∂C/∂x, ∂C/∂v0 or None)."""
    lib, sfx = _native_lib(u)
    if lib is not None and u.is_contiguous() and g_spikes.dtype == u.dtype and \
            (g_mem is None or g_mem.dtype == u.dtype):
        return _backward_native(lib, sfx, u, v0, g_spikes, g_mem, c, time_dim, need_v0)
    td = time_dim
    ut = u.movedim(td, 0)
    sg = _surrogate_grad(c.surrogate, ut - c.threshold)           # dS_t/du_t, all steps at once
    sgv = None if c.detach_reset else sg.clone()
    s = (ut > c.threshold).to(u.dtype) if c.reset == "zero" else None
    a = sg.mul_(g_spikes.movedim(td, 0))                           # direct term, becomes g_u in place
    gm = g_mem.movedim(td, 0) if g_mem is not None else None
    if c.reset_delay or c.reset == "none":
        # u_{t+1} depends on u_t through the (delayed) reset: g_u_t = A_t + gm_t + C_t·g_u_{t+1}
        if gm is not None:
            a.add_(gm)
        coef = _delayed_coef(ut, s, sgv, c)
    else:
        # v_t = reset(u_t) is returned and feeds u_{t+1}: g_u_t = A_t + e_t·(gm_t + beta·g_u_{t+1})
        e = _reset_factor(ut, s, sgv, c)
        if gm is not None:
            a.add_(gm * e if isinstance(e, torch.Tensor) else gm)
        coef = e * c.beta
    steps = a.unbind(0)
    coefs = coef.unbind(0) if isinstance(coef, torch.Tensor) else None
    for t in range(len(steps) - 2, -1, -1):
        if coefs is not None:
            steps[t].addcmul_(coefs[t], steps[t + 1])
        else:
            steps[t].add_(steps[t + 1], alpha=coef)
    g_v0 = _grad_v0(a[0], v0, c, need_v0)
    g_x = a if c.input_scale == 1.0 else a.mul_(c.input_scale)
    return g_x.movedim(0, td), g_v0


def _grad_v0(a0, v0, c: LIFConfig, need_v0: bool):
    """∂C/∂v0 from ∂C/∂u at the first step (None without v0 or when not needed)."""
    if v0 is None or v0.numel() == 0 or not need_v0:
        return None
    if c.reset_delay and c.reset != "none":
        s0 = (v0 > c.threshold).to(a0.dtype) if c.reset == "zero" else None
        sg0 = None if c.detach_reset else _surrogate_grad(c.surrogate, v0 - c.threshold)
        g_v0 = a0 * _delayed_coef(v0, s0, sg0, c)
    else:
        g_v0 = a0 * c.beta
    return _sum_to(g_v0, v0.shape)


def _backward_native(lib, sfx, u, v0, g_spikes, g_mem, c: LIFConfig, td: int, need_v0: bool):
    """:func:`lif_backward` in one compiled pass (same formulas)."""
    gs = g_spikes.contiguous()
    gm = None if g_mem is None else g_mem.contiguous()
    a = torch.empty_like(u)
    o, t, i = _otI(u.shape, td)
    sur, p = _surrogate_code(c.surrogate)
    getattr(lib, f"lif_backward_{sfx}")(u.data_ptr(), gs.data_ptr(), None if gm is None else gm.data_ptr(),
                                        a.data_ptr(), o, t, i, c.beta, c.threshold, _RESET_CODE[c.reset],
                                        int(c.reset_delay), int(c.detach_reset), c.v_reset, sur, p)
    g_v0 = _grad_v0(a.select(td, 0), v0, c, need_v0)
    g_x = a if c.input_scale == 1.0 else a.mul_(c.input_scale)
    return g_x, g_v0


def _delayed_coef(u, s, sg, c: LIFConfig):
    """du_{t+1}/du_t of the delayed-reset model (a float when constant)."""
    if c.reset == "none":
        return c.beta
    if c.reset == "subtract":   # u' = beta·u + x − θ·H(u − θ): the reset is not decayed
        return c.beta if c.detach_reset else c.beta - c.threshold * sg
    return _reset_factor(u, s, sg, c) * c.beta   # zero: u' = leak + beta·(reset(u) − leak) + x


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    return g if tuple(g.shape) == tuple(shape) else g.sum_to_size(shape)


def lif_sequence_fused(x: torch.Tensor, p: LIFParameters, v0: torch.Tensor | None = None,
                       return_membrane: bool = False, time_dim: int = 0):
    """Fused :func:`~mesu_snn.functional.lif.lif_sequence`. x: currents with time on ``time_dim``
    (default (T, *S)) -> spikes shaped like x [and membranes]. ``v0`` broadcasts to one step.

    Raises ValueError if :func:`supports` is false for ``p``.
    """
    if not supports(p):
        raise ValueError("lif_sequence_fused needs scalar (Python number) beta/threshold/v_leak/v_reset/"
                         "input_scale and a FastSigmoid/ATan/Heaviside surrogate; use mesu_snn.functional.lif_sequence")
    if not torch.is_floating_point(x):
        raise ValueError(f"lif_sequence_fused expects floating-point currents, got dtype {x.dtype}")
    time_dim = time_dim % max(x.dim(), 1)
    if x.dim() < 1 or x.shape[time_dim] < 1:
        raise ValueError(f"lif_sequence_fused expects T >= 1 along dim {time_dim}, got shape {tuple(x.shape)}")
    if torch.compiler.is_compiling():
        # under torch.compile the plain loop is traced instead: inductor fuses it (and AOT
        # autograd chooses what to save); the eager kernel's out=/in-place ops would break the graph
        out = lif_sequence(x.movedim(time_dim, 0), p, v0=v0, return_membrane=return_membrane)
        if return_membrane:
            return out[0].movedim(0, time_dim), out[1].movedim(0, time_dim)
        return out.movedim(0, time_dim)
    c = _config(p)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (v0 is not None and v0.requires_grad))
    if not needs_grad:
        spikes, u = _forward(x, c, v0, time_dim)
        if not return_membrane:
            return spikes
        return spikes, (u if c.reset_delay or c.reset == "none" else _post_reset(u, spikes, c))
    return _LIFSequenceFn.apply(x, v0, c, time_dim, return_membrane)
