"""Bayesian linear layer by local reparameterisation across time (the ``estimator="local"`` path).

``local_linear(x, μ, σ, μ_b, σ_b, samples=M)``: x (*S, B, in) shared by all M samples -> pre-activations
(M, *S, B, out), each (sample, batch element, neuron) drawn from the exact Gaussian law of
``x @ wᵀ + b`` over the steps S (flattened to T) for w ~ N(μ, σ²) (maths and the gradient
estimator: :mod:`mesu_snn.functional.local_reparam`). x of shape (B, in) is T = 1: one normal per
(m, b, j). A time-constant x (every step equal) is detected and run as T = 1 (rank-1 covariance).

One autograd node. Forward: the mean (one matmul), the T × T covariances (one matmul of the pair
products Z with σ²), their factors, M·T normals per (b, j). Backward: ∂C/∂μ = Σ_m gᵀx, and the
Rao-Blackwellised ∂C/∂σ (the conditional expectation of the weight-sampling estimator given the
sampled pre-activations), one matmul with Z; no (M, out, in) tensor is ever made. The input is data:
it must not require grad. Host syncs (the silent-column check on CPU, the time-constant check, the
choice of Cholesky or eigen path) make it not CUDA-graph capturable as written.
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ..functional.local_reparam import factor_covariance, pair_products
from . import native
from .noise import standard_normal
from .switch import native_enabled

__all__ = ["local_linear", "local_linear_forward", "local_linear_backward", "LocalLinearState"]

#: on CPU, columns of the input that are zero throughout are dropped when fewer than this fraction are active
_SPARSE_FRACTION = 0.75
#: with the compiled loops, T > 1: an input with at most this fraction of non-zero entries (after the
#: silent columns are dropped) runs the sparse loops (sparse_local_fwd/bwd) instead of the pair products
#: and BLAS (measured crossover: benchmarks/README.md, "sparse input")
_SPARSE_INPUT = 0.3


class _LocalLinearT1(torch.autograd.Function):
    """T = 1: x (B, in), z (M, B, J) -> a (M, B, J)."""

    @staticmethod
    def forward(ctx, x, wmu, wsig, bmu, bsig, z):
        a, saved = _t1_forward(x, wmu, wsig, bmu, bsig, z)
        ctx.save_for_backward(*saved)
        ctx.has_bias = bmu is not None
        return a

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return (None, *_t1_backward(ctx.saved_tensors, ctx.has_bias, g, ctx.needs_input_grad[1:5]), None)


def _t1_forward(x, wmu, wsig, bmu, bsig, z):
    """:class:`_LocalLinearT1`'s forward: (a, the tensors its backward needs)."""
    mean = x @ wmu.t()
    x2 = x.square()
    var = x2 @ wsig.square().t()
    if bmu is not None:
        mean = mean + bmu
        var = var + bsig.square()
    sd = var.sqrt_()
    a = torch.addcmul(mean, z, sd)                     # (M, B, J)
    v = z * torch.where(sd > 0, sd.reciprocal(), 0.0)  # Cov⁺u = z/sd
    return a, (x, x2, wsig, bsig if bsig is not None else wsig.new_empty(0), v)


def _mm(a, b, out=None):
    return a @ b if out is None else torch.mm(a, b, out=out)


def _mul(a, b, out=None):
    return a * b if out is None else torch.mul(a, b, out=out)


def _t1_backward(saved, has_bias, g, ni, out=None):
    """∂C/∂(μ, σ, μ_b, σ_b) (None where ``ni`` says not needed) from g (M, B, J); ``out``: optional
    buffers for ∂C/∂μ and ∂C/∂σ of the weights."""
    x, x2, wsig, bsig, v = saved
    gsum = g.sum(0)                                     # (B, J)
    k = (g * v).sum(0)                                  # Σ_m g·v, (B, J)
    o_mu, o_sig = (None, None) if out is None else out
    g_wmu = _mm(gsum.t(), x, o_mu) if ni[0] else None
    g_wsig = _mul(wsig, k.t() @ x2, o_sig) if ni[1] else None
    g_bmu = gsum.sum(0) if has_bias and ni[2] else None
    g_bsig = bsig * k.sum(0) if has_bias and ni[3] else None
    return g_wmu, g_wsig, g_bmu, g_bsig


class _LocalLinearT(torch.autograd.Function):
    """T > 1: x (T, B, in), z (M, T, B·J) -> a (M, T, B, J).

    Layout: every per-(b, j) quantity keeps n = b·J + j last, so the small T × T products are
    broadcast multiplies over n (no batched matmul of 10 × 10 matrices)."""

    @staticmethod
    def forward(ctx, x, wmu, wsig, bmu, bsig, z, sparse=False):
        a, saved = _t_forward(x, wmu, wsig, bmu, bsig, z, sparse)
        ctx.save_for_backward(*saved)
        ctx.has_bias = bmu is not None
        return a

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return (None, *_t_backward(ctx.saved_tensors, ctx.has_bias, g, ctx.needs_input_grad[1:5]), None, None)


def _t_forward(x, wmu, wsig, bmu, bsig, z, sparse=False):
    """:class:`_LocalLinearT`'s forward: (a, the tensors its backward needs). sparse: run the sparse
    loops (compiled loops only; the saved pair products are then an empty marker, see _t_backward)."""
    lib, sfx = _native_lib(x, z)
    if lib is not None:
        return _forward_native(lib, sfx, x, wmu, wsig, bmu, bsig, z, sparse)
    t, b, n_in = x.shape
    m, j = z.shape[0], wmu.shape[0]
    n = b * j
    iu, flat_u, flat_l, half = _triangle(t, x.device, x.dtype)
    mean = (x.reshape(t * b, n_in) @ wmu.t()).reshape(t, b, j)
    if bmu is not None:
        mean = mean + bmu
    zu = x.index_select(0, iu[0]) * x.index_select(0, iu[1])       # (P, B, in), pairs t <= s
    cu = (zu.reshape(-1, n_in) @ wsig.square().t()).reshape(-1, n)  # (P, B·J)
    if bsig is not None:
        cu = (cu.reshape(-1, b, j) + bsig.square()).reshape(-1, n)
    cut = cu.t()
    cov = cu.new_empty((n, t * t))
    cov.index_copy_(1, flat_u, cut).index_copy_(1, flat_l, cut)
    cov = cov.view(n, t, t)

    def exact_cov(mask):   # the covariances cov[mask] recomputed in float64
        idx = mask.nonzero().squeeze(1)
        bi, ji = idx // j, idx % j
        zz = pair_products(x.double())[bi]                          # (k, T, T, in)
        c = torch.einsum("ktsi,ki->kts", zz, wsig.double()[ji].square())
        return c if bsig is None else c + bsig.double()[ji].square()[:, None, None]
    lf, wf = factor_covariance(cov, exact_cov)                      # (N, T, T) each
    lw = torch.cat([lf, wf], 1).permute(2, 1, 0).contiguous()     # (T, 2T, N): [L; W][row, k, n] at [k, row, n]
    uv = lw[0].unsqueeze(0) * z[:, 0].unsqueeze(1)                  # (M, 2T, N): u = L z, v = W z,
    for kk in range(1, t):                                          # accumulated over k (measured faster
        uv.addcmul_(lw[kk].unsqueeze(0), z[:, kk].unsqueeze(1))     # than a broadcast sum or 10×10 bmm)
    a = torch.add(uv[:, :t].reshape(m, t, b, j), mean)
    return a, (x, wsig, bsig if bsig is not None else wsig.new_empty(0), uv, zu)


def _t_backward(saved, has_bias, g, ni, out=None):
    """∂C/∂(μ, σ, μ_b, σ_b) (None where ``ni`` says not needed) from g (M, T, B, J); ``out``: optional
    buffers for ∂C/∂μ and ∂C/∂σ of the weights."""
    x, wsig, bsig, uv, zu = saved
    t, b, n_in = x.shape
    m, j = g.shape[0], g.shape[-1]
    gsum = g.sum(0)                                     # (T, B, J)
    o_mu, o_sig = (None, None) if out is None else out
    lib, sfx = _native_lib(x, g)
    native_ok = lib is not None and g.dtype == x.dtype
    sparse = zu.numel() == 0                            # the forward ran the sparse loops
    if sparse and not (native_ok and (ni[0] or ni[1])):
        zu, sparse = _pair_products(x), False           # compiled loops switched off since the forward
    g_wmu = g_wsig = g_bsig = None
    if ni[0] and not sparse:
        g_wmu = _mm(gsum.reshape(t * b, j).t(), x.reshape(t * b, n_in), o_mu)
    need_k = sparse or ni[1] or (has_bias and ni[3])
    if need_k and native_ok:
        gc = g.reshape(m, t, b * j).contiguous()
        ks = x.new_empty((t * (t + 1) // 2, b * j))
        kb = x.new_empty((b * j,)) if has_bias and ni[3] else None
        getattr(lib, f"local_k_{sfx}")(gc.data_ptr(), uv.contiguous().data_ptr(), ks.data_ptr(),
                                       None if kb is None else kb.data_ptr(), t, b * j, m)
        if sparse:                                      # both weight gradients from the input's non-zeros
            g_wmu = o_mu if o_mu is not None and o_mu.is_contiguous() else x.new_empty((j, n_in))
            g_wsig = o_sig if o_sig is not None and o_sig.is_contiguous() else x.new_empty((j, n_in))
            if getattr(lib, f"sparse_local_bwd_{sfx}")(x.data_ptr(), wsig.contiguous().data_ptr(),
                                                       gsum.contiguous().data_ptr(), ks.data_ptr(),
                                                       g_wmu.data_ptr(), g_wsig.data_ptr(), t, b, n_in, j):
                raise MemoryError("sparse_local_bwd (native) could not allocate its work space")
            if o_mu is not None and g_wmu is not o_mu:
                g_wmu = o_mu.copy_(g_wmu)
            if o_sig is not None and g_wsig is not o_sig:
                g_wsig = o_sig.copy_(g_wsig)
            g_wmu, g_wsig = (g_wmu if ni[0] else None), (g_wsig if ni[1] else None)
        elif ni[1]:
            g_wsig = _mul(wsig, ks.reshape(-1, j).t() @ zu.reshape(-1, n_in), o_sig)
        if kb is not None:
            g_bsig = bsig * kb.reshape(b, j).sum(0)
    elif ni[1] or (has_bias and ni[3]):
        iu, flat_u, flat_l, half = _triangle(t, x.device, x.dtype)
        v = uv[:, t:]                                   # (M, T, N)
        k = (g.reshape(m, t, 1, b * j) * v.unsqueeze(1)).sum(0)      # K[t, s, n] = Σ_m g[m,t,n] v[m,s,n]
        if ni[1]:
            # Σ_{t,s} K[t,s] Z[t,s] over the upper triangle of the symmetric Z: (K + Kᵀ), diagonal once
            ks = (k + k.transpose(0, 1)).reshape(t * t, -1).index_select(0, flat_u).mul_(half)   # (P, N)
            g_wsig = _mul(wsig, ks.reshape(-1, j).t() @ zu.reshape(-1, n_in), o_sig)
        if has_bias and ni[3]:
            g_bsig = bsig * k.sum((0, 1)).reshape(b, j).sum(0)
    g_bmu = gsum.sum((0, 1)) if has_bias and ni[2] else None
    return g_wmu, g_wsig, g_bmu, g_bsig


def _native_lib(x: torch.Tensor, other: torch.Tensor):
    """The compiled library and dtype suffix if its loops may run on x (and other), else (None, None)."""
    if not native_enabled():
        return None, None
    sfx = native.suffix(x)
    if sfx is None or other.dtype != x.dtype:
        return None, None
    lib = native.library()
    return (lib, sfx) if lib is not None else (None, None)


def _pair_products(x):
    """zu (P, B, in): x[t]·x[s] for the pairs t <= s (triu order) of x (T, B, in)."""
    iu = _triangle(x.shape[0], x.device, x.dtype)[0]
    return x.index_select(0, iu[0]) * x.index_select(0, iu[1])


def _forward_native(lib, sfx, x, wmu, wsig, bmu, bsig, z, sparse=False):
    """:meth:`_LocalLinearT.forward` with its small steps in compiled loops (the same maths: float64
    Cholesky where it is well conditioned, the torch eigen path for the columns it flags). sparse:
    the mean and the pair covariances from the input's non-zeros (sparse_local_fwd), no pair
    products kept (an empty zu marks it for the backward)."""
    t, b, n_in = x.shape
    m, j = z.shape[0], wmu.shape[0]
    n = b * j
    x = x.contiguous()
    p = t * (t + 1) // 2
    if sparse and wmu.dtype == x.dtype and wsig.dtype == x.dtype:
        mean = x.new_empty((t, b, j))
        cu = x.new_empty((p, n))
        if getattr(lib, f"sparse_local_fwd_{sfx}")(x.data_ptr(), wmu.contiguous().data_ptr(),
                                                   wsig.contiguous().data_ptr(), mean.data_ptr(), cu.data_ptr(),
                                                   t, b, n_in, j):
            raise MemoryError("sparse_local_fwd (native) could not allocate its work space")
        zu = x.new_empty(0)
    else:
        mean = (x.reshape(t * b, n_in) @ wmu.t()).reshape(t, b, j)
        zu = x.new_empty((p, b, n_in))                                   # pairs t <= s
        getattr(lib, f"pair_products_{sfx}")(x.data_ptr(), zu.data_ptr(), t, b * n_in)
        cu = (zu.reshape(-1, n_in) @ wsig.square().t()).reshape(-1, n)  # (P, B·J)
    if bmu is not None:
        mean = mean + bmu
    if bsig is not None:
        cu = (cu.reshape(-1, b, j) + bsig.square()).reshape(-1, n)
    cu = cu.contiguous()
    z = z.contiguous()
    uv = x.new_empty((m, 2 * t, n))
    bad = torch.empty(n, dtype=torch.uint8)
    nbad = getattr(lib, f"local_factor_{sfx}")(cu.data_ptr(), z.data_ptr(), uv.data_ptr(), bad.data_ptr(),
                                               t, n, m, _CHOL_RTOL)
    if nbad < 0:
        raise MemoryError("local_factor (native) could not allocate its work space")
    if nbad:
        _factor_flagged(x, wsig, bsig, cu, z, uv, bad.bool(), t, j)
    a = torch.add(uv[:, :t].reshape(m, t, b, j), mean)
    return a, (x, wsig, bsig if bsig is not None else wsig.new_empty(0), uv, zu)


#: factor_covariance's default chol_rtol (the native loop applies the same test)
_CHOL_RTOL = 1e-4


def _factor_flagged(x, wsig, bsig, cu, z, uv, mask, t, j):
    """Columns the native Cholesky refused: factor_covariance (eigen path, float64 covariances) and
    u = L z, v = W z written into uv[:, :, those columns]."""
    iu, flat_u, flat_l, half = _triangle(t, x.device, x.dtype)
    idx = mask.nonzero().squeeze(1)
    sub = cu.index_select(1, idx).t()                                   # (k, P)
    cov = sub.new_empty((idx.numel(), t * t))
    cov.index_copy_(1, flat_u, sub).index_copy_(1, flat_l, sub)
    cov = cov.view(-1, t, t)

    def exact_cov(m2):
        sel = idx[m2]
        bi, ji = sel // j, sel % j
        zz = pair_products(x.double())[bi]
        c = torch.einsum("ktsi,ki->kts", zz, wsig.double()[ji].square())
        return c if bsig is None else c + bsig.double()[ji].square()[:, None, None]
    lf, wf = factor_covariance(cov, exact_cov, chol_rtol=_CHOL_RTOL)    # (k, T, T)
    zs = z.index_select(2, idx)                                         # (M, T, k)
    uv[:, :t, idx] = torch.einsum("nrk,mkn->mrn", lf, zs)
    uv[:, t:, idx] = torch.einsum("nrk,mkn->mrn", wf, zs)


_TRIANGLES: dict = {}


def _triangle(t: int, device, dtype):
    """Pairs t <= s of T steps: iu (2, P), flat indices t·T+s and s·T+t (P,), and a (P, 1) factor
    that is 1/2 on the diagonal (cached per T, device, dtype)."""
    key = (t, str(device), dtype)
    if key not in _TRIANGLES:
        iu = torch.triu_indices(t, t, device=device)
        half = torch.where(iu[0] == iu[1], 0.5, 1.0).to(dtype).unsqueeze(1)
        _TRIANGLES[key] = (iu, iu[0] * t + iu[1], iu[1] * t + iu[0], half)
    return _TRIANGLES[key]


def local_linear(x: torch.Tensor, weight_mu: torch.Tensor, weight_sigma: torch.Tensor,
                 bias_mu: torch.Tensor | None = None, bias_sigma: torch.Tensor | None = None,
                 samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (*S, B, in) or (in,) -> (M, *S, B, out) [(M, out) for (in,)]; weights (out, in), bias (out,).

    Per (sample, batch element, neuron) an exact draw of the pre-activations over the steps S given x;
    independent across batch elements (see :mod:`mesu_snn.functional.local_reparam`)."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if weight_mu.dim() != 2 or weight_sigma.shape != weight_mu.shape:
        raise ValueError(f"local_linear expects weight_mu and weight_sigma of one shape (out, in), got "
                         f"{tuple(weight_mu.shape)}, {tuple(weight_sigma.shape)}")
    if (bias_mu is None) != (bias_sigma is None):
        raise ValueError("local_linear: give both bias_mu and bias_sigma, or neither")
    if bias_mu is not None and (bias_mu.shape != (weight_mu.shape[0],) or bias_sigma.shape != bias_mu.shape):
        raise ValueError(f"local_linear expects biases of shape ({weight_mu.shape[0]},), got "
                         f"{tuple(bias_mu.shape)}, {tuple(bias_sigma.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight_mu.shape[1] or not torch.is_floating_point(x):
        raise ValueError(f"local_linear expects a floating-point input (..., in={weight_mu.shape[1]}), got "
                         f"{tuple(x.shape)} {x.dtype}")
    if x.requires_grad:
        raise ValueError("local_linear (estimator='local') samples pre-activations given the input; the input "
                         "must not require grad (use it for a first layer fed with data, or estimator='weights')")
    n_out = weight_mu.shape[0]
    plan = _prepare(x, weight_mu, weight_sigma)
    xt, wmu, wsig, t_run = plan.x, plan.weight_mu, plan.weight_sigma, plan.t_run
    b = xt.shape[-2]
    if t_run == 1:
        z = standard_normal((samples, b, n_out), generator=generator, dtype=x.dtype, device=x.device)
        a = _LocalLinearT1.apply(xt[0], wmu, wsig, bias_mu, bias_sigma, z).unsqueeze(1)
        if plan.t > 1:
            a = a.expand(samples, plan.t, b, n_out)
    else:
        z = standard_normal((samples, plan.t, b * n_out), generator=generator, dtype=x.dtype, device=x.device)
        a = _LocalLinearT.apply(xt, wmu, wsig, bias_mu, bias_sigma, z, plan.sparse)
    return a.reshape(samples, *plan.lead, n_out)


class _Plan(NamedTuple):
    """What :func:`local_linear` runs on: x (T_run, B, in') with the silent columns dropped (``idx``
    the kept ones, or None) and, for a time-constant input, one step only (T_run = 1 < T)."""
    x: torch.Tensor
    weight_mu: torch.Tensor
    weight_sigma: torch.Tensor
    idx: torch.Tensor | None
    t: int
    t_run: int
    lead: tuple
    sparse: bool = False      # T_run > 1, compiled loops, at most _SPARSE_INPUT non-zeros: sparse loops


def _prepare(x, weight_mu, weight_sigma) -> _Plan:
    """The input checks of :func:`local_linear` (silent columns, a time-constant input) and the
    input and weights they leave."""
    n_in = weight_mu.shape[1]
    lead = tuple(x.shape[:-1])
    if x.dim() == 1:
        x = x.unsqueeze(0)
    b = x.shape[-2]
    steps = x.shape[:-2]
    t = 1
    for s in steps:
        t *= s
    xt = x.reshape(t, b, n_in)
    lib, sfx = _native_lib(xt, weight_mu)
    if lib is not None:
        # the two checks below in one compiled pass over the input
        xt = xt.contiguous()
        active = torch.empty(n_in, dtype=torch.uint8)
        tconst = ctypes.c_int(0)
        nnz = ctypes.c_int64(0)
        n_active = getattr(lib, f"scan_input_{sfx}")(xt.data_ptr(), t, b, n_in, active.data_ptr(), ctypes.byref(tconst),
                                                     ctypes.byref(nnz))
        time_constant = t > 1 and bool(tconst.value)
        kept = n_active if n_active < _SPARSE_FRACTION * n_in else n_in     # the columns left below
        sparse = nnz.value <= _SPARSE_INPUT * t * b * max(kept, 1)
        active = active.bool() if n_active < _SPARSE_FRACTION * n_in else None
    elif not x.is_cuda:
        active = xt.ne(0).flatten(0, 1).any(0)
        active = active if int(active.sum()) < _SPARSE_FRACTION * n_in else None
        time_constant = sparse = None
    else:
        active = time_constant = sparse = None
    idx = None
    if active is not None:
        # inputs that are zero at every step and batch element do not reach the output: drop their
        # columns (exact; their gradients are zero, written by index_select's backward); CPU only
        idx = active.nonzero().squeeze(1)
        xt, weight_mu, weight_sigma = xt.index_select(2, idx), weight_mu.index_select(1, idx), \
            weight_sigma.index_select(1, idx)
    if time_constant is None:
        time_constant = t > 1 and torch.equal(xt, xt[:1].expand_as(xt))
    if time_constant:
        return _Plan(xt[:1], weight_mu, weight_sigma, idx, t, 1, lead)     # rank-1 covariance
    return _Plan(xt, weight_mu, weight_sigma, idx, t, t, lead, bool(sparse))


class LocalLinearState(NamedTuple):
    """What :func:`local_linear_backward` needs from :func:`local_linear_forward`."""
    plan: _Plan
    saved: tuple
    has_bias: bool
    n_in: int


@torch.no_grad()
def local_linear_forward(x: torch.Tensor, weight_mu: torch.Tensor, weight_sigma: torch.Tensor,
                         bias_mu: torch.Tensor | None = None, bias_sigma: torch.Tensor | None = None,
                         samples: int = 1, generator: torch.Generator | None = None):
    """:func:`local_linear` without autograd, for hand-written training steps: -> (a, state) with the
    same a (the same draws from ``generator``, the same kernels); ``local_linear_backward(state, g)``
    then gives the gradients autograd would. No argument checks (:func:`local_linear` has them)."""
    n_out = weight_mu.shape[0]
    plan = _prepare(x, weight_mu, weight_sigma)
    xt, b = plan.x, plan.x.shape[-2]
    if plan.t_run == 1:
        z = standard_normal((samples, b, n_out), generator=generator, dtype=x.dtype, device=x.device)
        a, saved = _t1_forward(xt[0], plan.weight_mu, plan.weight_sigma, bias_mu, bias_sigma, z)
        a = a.unsqueeze(1)
        if plan.t > 1:
            a = a.expand(samples, plan.t, b, n_out)
    else:
        z = standard_normal((samples, plan.t, b * n_out), generator=generator, dtype=x.dtype, device=x.device)
        a, saved = _t_forward(xt, plan.weight_mu, plan.weight_sigma, bias_mu, bias_sigma, z, plan.sparse)
    return a.reshape(samples, *plan.lead, n_out), LocalLinearState(plan, saved, bias_mu is not None,
                                                                    weight_mu.shape[1])


@torch.no_grad()
def local_linear_backward(state: LocalLinearState, g: torch.Tensor, out=None):
    """∂C/∂(weight_mu, weight_sigma, bias_mu, bias_sigma) (biases: None without them) from g = ∂C/∂a,
    a from :func:`local_linear_forward`: the backward :func:`local_linear`'s autograd graph runs.
    ``out``: optional (out, in) buffers (∂C/∂weight_mu, ∂C/∂weight_sigma) written instead of new tensors."""
    plan = state.plan
    m, n_out = g.shape[0], g.shape[-1]
    b = plan.x.shape[-2]
    need = (True, True, state.has_bias, state.has_bias)
    if plan.t_run == 1:
        g = g.reshape(m, plan.t, b, n_out)
        g = g.sum(1) if plan.t > 1 else g[:, 0]            # the expand over the T steps
        grads = _t1_backward(state.saved, state.has_bias, g, need, out if plan.idx is None else None)
    else:
        grads = _t_backward(state.saved, state.has_bias, g.reshape(m, plan.t, b, n_out), need,
                            out if plan.idx is None else None)
    g_wmu, g_wsig, g_bmu, g_bsig = grads
    if plan.idx is not None:                                # the dropped columns: zero gradients
        if out is None:
            full = g_wmu.new_zeros((2, n_out, state.n_in))
            out = full[0], full[1]
        else:
            out[0].zero_()
            out[1].zero_()
        out[0].index_copy_(1, plan.idx, g_wmu)
        out[1].index_copy_(1, plan.idx, g_wsig)
        g_wmu, g_wsig = out
    return g_wmu, g_wsig, g_bmu, g_bsig
