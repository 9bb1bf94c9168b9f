"""kernels.native: the compiled loops equal the pure-PyTorch fused kernel (spikes and membranes bit
for bit, gradients to rounding), are switched by ``fast_paths(native=...)``, and a missing compiler
falls back to the torch code with a logged warning."""
from __future__ import annotations

import functools
import itertools
import logging

import pytest
import torch

import mesu_snn as ms
from mesu_snn.functional.lif import LIFParameters, lif_sequence
from mesu_snn.functional.surrogate import ATan, FastSigmoid, Heaviside
from mesu_snn.kernels import fast_paths, lif_sequence_fused, native
from mesu_snn.kernels.switch import native_enabled
from test_kernels import _run as _kernel_run

needs_lib = pytest.mark.skipif(not native.available(), reason="no C++ compiler: native kernels not built")

CONFIGS = list(itertools.product(["subtract", "zero", "none"], [True, False], [True, False],
                                 [FastSigmoid(25.0), ATan(2.0), Heaviside()]))


def _run(x, p, v0, ret, time_dim, native_on):
    """test_kernels' spikes/membranes/gradients harness, under fast_paths(native=native_on)."""
    with fast_paths(True, native=native_on):
        return _kernel_run(functools.partial(lif_sequence_fused, time_dim=time_dim), x, p, v0, ret)


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset,delay,detach,sur", CONFIGS)
def test_native_equals_torch_kernel(reset, delay, detach, sur, dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 12, 3, 17, dtype=dtype) * 0.8 + 0.3          # time on dim 1, as SpikingMLP runs it
    p = LIFParameters(beta=0.85, threshold=0.9, reset=reset, reset_delay=delay, detach_reset=detach,
                      surrogate=sur, v_leak=0.05, v_reset=-0.1, input_scale=1.3)
    v0 = torch.rand(4, 3, 17, dtype=dtype) * 1.5
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for ret, init in [(False, None), (True, v0)]:
        nat = _run(x, p, init, ret, 1, True)
        ref = _run(x, p, init, ret, 1, False)
        assert ref[0].sum() > 0, "the test input must make neurons fire"
        assert torch.equal(nat[0], ref[0])
        if ret:
            assert torch.equal(nat[1], ref[1])
            torch.testing.assert_close(nat[3], ref[3], **tol)
        torch.testing.assert_close(nat[2], ref[2], **tol)


@needs_lib
def test_native_spiking_mlp_equals_reference_path():
    """The whole network: native loops vs the readable reference (fast_paths(False)), float64."""
    torch.manual_seed(3)
    net = ms.SpikingMLP([20, 9, 4], readout="count", sigma_init=1.0).double()
    x = (torch.rand(8, 2, 20, dtype=torch.float64) < 0.4).double() * 3.0
    y = torch.tensor([1, 3])
    outs = []
    for fp in (True, False):
        net.zero_grad(set_to_none=True)
        with fast_paths(fp):
            o = net(x, samples=3, generator=torch.Generator().manual_seed(4))
            ms.nll_loss(o, y).backward()
        outs.append([o.detach()] + [p.grad.clone() for p in net.parameters()])
    assert outs[0][0].sum() > 0
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_switch_and_fallback(monkeypatch, tmp_path, caplog):
    assert native_enabled()
    with fast_paths(native=False):
        assert not native_enabled() and ms.kernels.fast_paths_enabled()
    with fast_paths(False):
        assert not native_enabled()
        with fast_paths(native=False):
            assert not ms.kernels.fast_paths_enabled()      # native= alone leaves the other switch alone
        with fast_paths(native=True):
            assert not native_enabled() and not ms.kernels.fast_paths_enabled()
    with fast_paths():
        assert native_enabled()
    assert native_enabled()
    # no compiler: library() is None (warned once), and the LIF kernel still runs (torch code)
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setenv("MESU_SNN_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mesu_snn.kernels.native"):
        assert native.library() is None
    assert "no C++ compiler" in caplog.text
    x = torch.randn(5, 2, 3) + 1.0
    p = LIFParameters(beta=0.9, threshold=1.0)
    assert torch.equal(lif_sequence_fused(x, p), lif_sequence(x, p))
    # disabled by the environment: not even a build attempt
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("MESU_SNN_NATIVE", "0")
    monkeypatch.setattr(native, "_build", lambda: pytest.fail("must not build"))
    assert native.library() is None and not native.available()


@pytest.fixture(autouse=True)
def _torch_normals(monkeypatch):
    """These tests compare the loops with the torch code given the same normals: draw them with
    torch.randn whatever the switch (the compiled generator has its own tests, test_kernels_noise.py)."""
    import importlib
    ll = importlib.import_module("mesu_snn.kernels.local_linear")
    monkeypatch.setattr(ll, "standard_normal", lambda shape, generator=None, dtype=None, device=None:
                        torch.randn(shape, generator=generator, dtype=dtype, device=device))


def _local(x, params, native_on, samples=5, seed=7):
    from mesu_snn.kernels.local_linear import local_linear
    for q in params:
        if q is not None:
            q.grad = None
    with fast_paths(True, native=native_on):
        a = local_linear(x, *params, samples=samples, generator=torch.Generator().manual_seed(seed))
        w = torch.linspace(-1, 1, a.shape[-1], dtype=a.dtype)
        (torch.tanh(a) * w).sum().backward()
    return [a.detach()] + [None if q is None else q.grad.clone() for q in params]


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("singular", [False, True])
@pytest.mark.parametrize("spikes", [True, False])
def test_native_local_linear_equals_torch_path(dtype, bias, singular, spikes):
    """Same normals -> the same pre-activations and gradients (Cholesky columns, and with a repeated
    time step the eigen path for the columns the native loop flags; sparse spike input: the
    zero-skipping products, dense currents: BLAS)."""
    g = torch.Generator().manual_seed(5)
    if spikes:
        x = (torch.rand(6, 2, 30, generator=g, dtype=torch.float64) < 0.3).to(dtype) * 1.5
    else:
        x = torch.rand(6, 2, 30, generator=g, dtype=torch.float64).to(dtype)
    if singular:
        x[3] = x[1]
    layer = ms.BayesLinear(30, 4, bias=bias, sigma_init=1.0).to(dtype)
    params = [layer.weight_mu, layer.weight_sigma, layer.bias_mu, layer.bias_sigma]
    nat = _local(x, params, True)
    ref = _local(x, params, False)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    assert nat[0].abs().sum() > 0
    for u, v in zip(nat, ref):
        if u is None:
            assert v is None
        else:
            torch.testing.assert_close(u, v, **tol)


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(10, 1, 37, 13), (7, 3, 50, 6), (4, 2, 16, 24)])
def test_sparse_input_loops_equal_dense_and_torch(monkeypatch, dtype, bias, shape):
    """A sparse input (graded spikes) run by sparse_local_fwd/bwd (no pair products, no BLAS) gives the
    pre-activations and all four gradients of the dense compiled path and of the torch path, to
    rounding; sizes that are not multiples of the 8 x 8 transpose blocks or the input tiles."""
    import importlib
    ll = importlib.import_module("mesu_snn.kernels.local_linear")
    t, b, n_in, j = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = ((torch.rand(t, b, n_in, generator=g, dtype=torch.float64) < 0.2) *
         torch.rand(t, b, n_in, generator=g, dtype=torch.float64) * 2).to(dtype)
    x[:, :, 0] = 0                                     # an input silent throughout: zero gradients
    layer = ms.BayesLinear(n_in, j, bias=bias, sigma_init=0.8).to(dtype)
    params = [layer.weight_mu, layer.weight_sigma, layer.bias_mu, layer.bias_sigma]
    monkeypatch.setattr(ll, "_SPARSE_FRACTION", 0.0)   # keep the silent column: the loops see it
    runs = {}
    for name, frac, on in (("sparse", 1.0, True), ("dense", -1.0, True), ("torch", 1.0, False)):
        monkeypatch.setattr(ll, "_SPARSE_INPUT", frac)
        runs[name] = _local(x, params, on)
    plan = ll._prepare(x, layer.weight_mu, layer.weight_sigma)
    assert plan.sparse and plan.t_run == t              # the loops did run (the input is below the bound)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert runs["sparse"][0].abs().sum() > 0
    for ref in ("dense", "torch"):
        for u, v in zip(runs["sparse"], runs[ref]):
            if u is None:
                assert v is None
            else:
                torch.testing.assert_close(u, v, **tol)
    assert runs["sparse"][1][:, 0].abs().max() == 0 and runs["sparse"][2][:, 0].abs().max() == 0


@needs_lib
def test_sparse_input_backward_without_native_and_into_buffers(monkeypatch):
    """The sparse forward keeps no pair products: a backward run with the compiled loops switched off
    rebuilds them (same gradients), and local_linear_backward writes into given buffers."""
    import importlib
    from mesu_snn.kernels.local_linear import local_linear, local_linear_backward, local_linear_forward
    ll = importlib.import_module("mesu_snn.kernels.local_linear")
    monkeypatch.setattr(ll, "_SPARSE_INPUT", 1.0)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(8, 1, 40, generator=g, dtype=torch.float64) < 0.25).double()
    layer = ms.BayesLinear(40, 9, bias=False, sigma_init=0.5).double()
    ref = _local(x, [layer.weight_mu, layer.weight_sigma, None, None], True)
    layer.zero_grad(set_to_none=True)
    with fast_paths(True, native=True):
        a = local_linear(x, layer.weight_mu, layer.weight_sigma, samples=5, generator=torch.Generator().manual_seed(7))
    with fast_paths(True, native=False):
        (torch.tanh(a) * torch.linspace(-1, 1, a.shape[-1], dtype=a.dtype)).sum().backward()
    torch.testing.assert_close(layer.weight_mu.grad, ref[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight_sigma.grad, ref[2], rtol=1e-10, atol=1e-12)
    with fast_paths(True, native=True):
        a, state = local_linear_forward(x, layer.weight_mu.detach(), layer.weight_sigma.detach(), samples=5,
                                        generator=torch.Generator().manual_seed(7))
        gout = torch.tanh(a).pow(0) - torch.tanh(a).square()          # d tanh(a)/da
        gout = gout * torch.linspace(-1, 1, a.shape[-1], dtype=a.dtype)
        bufs = (torch.full((9, 40), 7.0, dtype=torch.float64), torch.full((9, 40), 7.0, dtype=torch.float64))
        got = local_linear_backward(state, gout, out=bufs)
    assert got[0] is bufs[0] and got[1] is bufs[1]
    torch.testing.assert_close(bufs[0], ref[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bufs[1], ref[2], rtol=1e-10, atol=1e-12)


def _mesu_after_step(groups_spec, native_on, bad=False):
    torch.manual_seed(8)
    pairs = [(torch.randn(6, 5, dtype=torch.float64), torch.rand(6, 5, dtype=torch.float64) * 0.2 + 0.05),
             (torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.2 + 0.05)]
    for mu, s in pairs:
        mu.grad, s.grad = torch.randn_like(mu) * 3, torch.randn_like(s) * 3
    if bad:
        pairs[1][1].grad[2] = float("nan")
    groups = [dict(spec, pairs=[pairs[i] for i in idx]) for spec, idx in groups_spec]
    opt = ms.MESU(groups, memory=50.0, sigma_prior=0.3)
    with fast_paths(True, native=native_on):
        opt.step(batch_size=2)
    return [t.clone() for pair in pairs for t in pair], opt


@needs_lib
@pytest.mark.parametrize("groups_spec", [
    [({}, [0, 1])],
    [({"clamp_grad": None, "mu_prior": 0.2}, [0, 1])],
    [({"lr_mu": 0.5}, [0]), ({"clamp_grad": None, "lr_sigma": 2.0}, [1])],
])
def test_native_mesu_step_equals_fused_update(groups_spec):
    nat, opt = _mesu_after_step(groups_spec, True)
    ref, _ = _mesu_after_step(groups_spec, False)
    for a, b in zip(nat, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert all(g["step"] == 1 for g in opt.param_groups)


@needs_lib
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_native_mesu_step_nonfinite_gradient_changes_nothing(mode):
    mu, s = torch.randn(4, 3), 0.3 * torch.rand(4, 3) + 0.1     # σ < the prior's limit for memory 10
    mu.grad, s.grad = torch.randn(4, 3), torch.randn(4, 3)
    s.grad[1, 2] = float("inf")
    saved = mu.clone(), s.clone()
    opt = ms.MESU([(mu, s)], memory=10.0, on_nonfinite=mode)
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="pair0_sigma"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert torch.equal(mu, saved[0]) and torch.equal(s, saved[1])


@needs_lib
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_native_mesu_step_that_would_make_sigma_nonpositive_changes_nothing(mode, groups):
    """Finite gradients, but a σ step so large that one σ would go ≤ 0: the compiled step checks
    the new values before writing (one group: mesu_step; several: a no-write pass per group), so
    nothing changes, and the torch code names the tensor (raise) or counts the skip."""
    from mesu_snn.errors import NonFiniteStepError
    pairs = []
    for _ in range(groups):
        mu, s = torch.randn(4, 3), torch.full((4, 3), 0.05)
        mu.grad, s.grad = torch.randn(4, 3), torch.zeros(4, 3)
        pairs.append((mu, s))
    pairs[-1][1].grad[2, 1] = 1e4             # Δσ = -(lr_sigma/2)·σ²·g = -12.5: σ would be < 0
    saved = [(m.clone(), s.clone()) for m, s in pairs]
    params = [{"pairs": [p]} for p in pairs] if groups > 1 else pairs
    opt = ms.MESU(params, memory=1e4, clamp_grad=None, on_nonfinite=mode)
    assert native.library() is not None
    _refused_step_changes_nothing(opt, pairs, saved, mode, NonFiniteStepError, "<= 0", steps=0)


def _refused_step_changes_nothing(opt, pairs, saved, mode, error, match, steps):
    """opt.step() raises ``error`` (mode "raise") or is counted as skipped; no μ, σ or step count moved."""
    if mode == "raise":
        with pytest.raises(error, match=match):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    for (m, s), (m0, s0) in zip(pairs, saved):
        assert torch.equal(m, m0) and torch.equal(s, s0)
    assert all(g["step"] == steps for g in opt.param_groups)


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which,value", [(2, float("inf")), (3, float("-inf")), (2, float("nan")), (3, float("nan"))])
def test_native_mesu_step_checks_the_gradients_in_its_check_pass(dtype, which, value):
    """mesu_step has no separate finiteness pass over the gradients: its no-write check pass refuses a
    non-finite ∂μ or ∂σ itself, also where the clamp would turn it into a finite step."""
    from mesu_snn.kernels import native
    lib, sfx = native.library(), native.suffix(torch.empty(0, dtype=dtype))
    torch.manual_seed(3)
    mu, s = torch.randn(7, 5, dtype=dtype), 0.3 * torch.rand(7, 5, dtype=dtype) + 0.1
    gm, gs = torch.randn_like(mu), torch.randn_like(s)
    tensors = [mu, s, gm, gs]
    tensors[which][3, 1] = value
    saved = mu.clone(), s.clone()
    ptrs, sizes, _ = native.pointers(tensors)
    k = 1 / 10.0
    args = (-k, 0.0, 0, -1.0, -k / 2, k / 2 * 0.3 ** 2, -0.5)
    assert getattr(lib, f"mesu_step_{sfx}")(ptrs, sizes, 1, *args, 1.0) == 0         # clamped at 1
    assert getattr(lib, f"mesu_step_{sfx}")(ptrs, sizes, 1, *args, -1.0) == 0        # no clamp
    assert torch.equal(mu, saved[0]) and torch.equal(s, saved[1])
    tensors[which][3, 1] = 0.5                                                       # finite again: it steps
    assert getattr(lib, f"mesu_step_{sfx}")(ptrs, sizes, 1, *args, 1.0) == 1
    assert not torch.equal(mu, saved[0])


@needs_lib
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_native_mesu_step_several_groups_cached_across_steps(mode):
    """Several MESU groups (as sigma_prior="init" makes): the pointer arrays are kept between steps with
    the same tensors; every step equals the torch update, and a later step with a non-finite gradient
    in the last group changes no group (check passes of all groups before any write)."""
    torch.manual_seed(0)
    pairs = [(torch.randn(5, 4, dtype=torch.float64), 0.1 + 0.2 * torch.rand(5, 4, dtype=torch.float64))
             for _ in range(3)]
    twins = [(m.clone(), s.clone()) for m, s in pairs]
    specs = [{"sigma_prior": 0.2}, {"sigma_prior": 0.5, "lr_mu": 0.5}, {"sigma_prior": 1.0}]
    opt = ms.MESU([dict(sp, pairs=[p]) for sp, p in zip(specs, pairs)], memory=100.0, on_nonfinite=mode)
    ref = ms.MESU([dict(sp, pairs=[p]) for sp, p in zip(specs, twins)], memory=100.0)
    for step in range(3):
        for (m, s), (m2, s2) in zip(pairs, twins):
            gm, gs = torch.randn_like(m), torch.randn_like(s)
            if m.grad is None:
                m.grad, s.grad = gm.clone(), gs.clone()
            else:                               # the same gradient tensors written in place: the cache holds
                m.grad.copy_(gm)
                s.grad.copy_(gs)
            m2.grad, s2.grad = gm, gs
        opt.step()
        with fast_paths(True, native=False):
            ref.step()
        assert getattr(opt, "_native_cache", None) is not None
        for (m, s), (m2, s2) in zip(pairs, twins):
            torch.testing.assert_close(m, m2, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(s, s2, rtol=1e-12, atol=1e-14)
    assert all(g["step"] == 3 for g in opt.param_groups)
    pairs[2][1].grad[1, 1] = float("nan")
    saved = [(m.clone(), s.clone()) for m, s in pairs]
    _refused_step_changes_nothing(opt, pairs, saved, mode, FloatingPointError, "pair0_sigma", steps=3)
