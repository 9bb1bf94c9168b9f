"""The fused LIF kernel equals the reference loop: same spikes, same gradients."""
from __future__ import annotations

import itertools

import pytest
import torch

import mesu_snn as ms

from mesu_snn.functional.lif import LIFParameters, lif_sequence
from mesu_snn.functional.surrogate import ATan, FastSigmoid, Heaviside
from mesu_snn.kernels import lif_sequence_fused, supports

CONFIGS = list(itertools.product(["subtract", "zero", "none"], [True, False], [True, False],
                                 [FastSigmoid(25.0), ATan(2.0), Heaviside()]))


def _run(fn, x, p, v0, ret):
    x = x.clone().requires_grad_(True)
    v = None if v0 is None else v0.clone().requires_grad_(True)
    out = fn(x, p, v0=v, return_membrane=ret)
    s, m = out if ret else (out, None)
    gen = torch.Generator().manual_seed(1)
    loss = (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    if m is not None:
        loss = loss + (m * torch.randn(m.shape, generator=gen, dtype=m.dtype)).sum()
    loss.backward()
    return s, m, x.grad, (None if v is None else v.grad)


@pytest.mark.parametrize("reset,delay,detach,sur", CONFIGS)
def test_fused_equals_reference(reset, delay, detach, sur):
    torch.manual_seed(0)
    x = torch.randn(12, 3, 17, dtype=torch.float64) * 0.8 + 0.3
    p = LIFParameters(beta=0.85, threshold=0.9, reset=reset, reset_delay=delay, detach_reset=detach,
                      surrogate=sur)
    v0 = torch.rand(3, 17, dtype=torch.float64) * 1.5
    for ret, init in [(False, None), (True, v0)]:
        ref = _run(lif_sequence, x, p, init, ret)
        fus = _run(lif_sequence_fused, x, p, init, ret)
        assert ref[0].sum() > 0, "the test input must make neurons fire"
        assert torch.equal(ref[0], fus[0])
        if ret:
            torch.testing.assert_close(fus[1], ref[1], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(fus[3], ref[3], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fus[2], ref[2], rtol=1e-10, atol=1e-10)


def test_fused_float32_bitwise_spikes_and_leak_scale():
    """Norse-like parameters (leak, gain, zero reset, immediate) in float32: identical spikes."""
    torch.manual_seed(1)
    p = LIFParameters.norse_box(tau_mem_inv=200.0, v_leak=0.1, v_th=0.5)
    x = torch.rand(30, 8, 64) * 8.0
    ref = _run(lif_sequence, x, p, None, True)
    fus = _run(lif_sequence_fused, x, p, None, True)
    assert ref[0].sum() > 0
    assert torch.equal(ref[0], fus[0])
    assert torch.equal(ref[1], fus[1])
    torch.testing.assert_close(fus[2], ref[2], rtol=1e-5, atol=1e-6)


def test_time_dim_matches_transposed_reference():
    torch.manual_seed(2)
    p = LIFParameters(beta=0.9, threshold=1.0)
    x = (torch.randn(4, 10, 5, 7) + 0.5).requires_grad_(True)   # (M, T, B, F), time on dim 1
    s = lif_sequence_fused(x, p, time_dim=1)
    (s * torch.arange(7.0)).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    sr = lif_sequence(xr.transpose(0, 1), p).transpose(0, 1)
    (sr * torch.arange(7.0)).sum().backward()
    assert s.is_contiguous() and s.shape == x.shape
    assert torch.equal(s, sr)
    torch.testing.assert_close(x.grad, xr.grad)


def test_lif_module_chooses_its_fast_path():
    """ms.LIF runs the fused kernel when it supports the parameters (and the one switch is on),
    the reference loop otherwise: the same spikes either way."""
    p = LIFParameters()
    x = torch.randn(5, 2, 3) + 1.0
    lif = ms.LIF()
    assert torch.equal(lif(x), lif_sequence(x, p))
    with ms.kernels.fast_paths(False):
        assert torch.equal(lif(x), lif_sequence(x, p))
    assert torch.equal(lif(x.transpose(0, 1), time_dim=1), lif_sequence(x, p).transpose(0, 1))
    tensor_beta = p.with_(beta=torch.full((3,), 0.9))
    assert not supports(tensor_beta)
    per_neuron = ms.LIF(beta=torch.full((3,), 0.9))
    assert torch.equal(per_neuron(x), lif_sequence(x, p))
    with pytest.raises(ValueError, match="fused"):
        lif_sequence_fused(x, tensor_beta)


def test_fused_no_grad_and_bad_input():
    p = LIFParameters()
    x = torch.randn(6, 4) + 1.0
    with torch.no_grad():
        assert torch.equal(lif_sequence_fused(x, p), lif_sequence(x, p))
    with pytest.raises(ValueError, match="floating"):
        lif_sequence_fused(torch.ones(3, 2, dtype=torch.int64), p)
    with pytest.raises(ValueError, match="T >= 1"):
        lif_sequence_fused(torch.ones(0, 2), p)


def test_fused_saves_less_memory_than_reference():
    """The autograd graph of the fused kernel keeps one float tensor of the input's size."""
    p = LIFParameters()
    x = (torch.randn(20, 64, 128) + 0.5).requires_grad_(True)

    def saved_bytes(fn):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, p).sum()
        return sum(total)
    fused, ref = saved_bytes(lif_sequence_fused), saved_bytes(lambda a, q: lif_sequence(a, q))
    assert fused <= x.numel() * 4 + 64 * 128 * 4
    assert fused < 0.6 * ref


@pytest.mark.parametrize("readout", ["count", "membrane"])
def test_spiking_mlp_fast_path_equals_reference_path(readout):
    """Whole model: the fused path and the reference loop give the same logits and gradients."""
    from mesu_snn.kernels import fast_paths
    import mesu_snn as ms
    torch.manual_seed(3)
    net = ms.SpikingMLP([20, 16, 5], readout=readout).double()
    x = (torch.rand(8, 6, 20) < 0.4).double()
    y = torch.randint(0, 5, (6,))
    outs, grads = [], []
    for enabled in (True, False):
        net.zero_grad()
        with fast_paths(enabled):
            out = net(x, samples=3, generator=torch.Generator().manual_seed(9))
        ms.nll_loss(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert outs[0].abs().sum() > 0
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_compiled_model_traces_one_graph_and_matches_eager():
    """Under torch.compile the fused kernel hands over to the plain loop: no graph break, same result."""
    import mesu_snn as ms
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(4)
    net = ms.SpikingMLP([16, 12, 4], readout="count")
    x = (torch.rand(6, 5, 16) < 0.4).float()
    y = torch.randint(0, 4, (5,))
    compiled = torch.compile(lambda a, b: ms.nll_loss(net(a, samples=2), b), backend="aot_eager", dynamic=False)
    results = []
    for fn in (compiled, lambda a, b: ms.nll_loss(net(a, samples=2), b)):
        net.zero_grad()
        torch.manual_seed(0)
        loss = fn(x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    assert results[1][0] > 0
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert dict(counters["graph_break"]) == {}


def test_spiking_convnet_fast_path_equals_reference_path():
    from mesu_snn.kernels import fast_paths
    import mesu_snn as ms
    torch.manual_seed(5)
    net = ms.SpikingConvNet(input_shape=(2, 8, 8), channels=(2, 4), n_classes=3, readout="count",
                            mu_init=3.0, sigma_init=1.0).double()
    x = (torch.rand(5, 3, 2, 8, 8) < 0.5).double()
    y = torch.randint(0, 3, (3,))
    res = []
    for enabled in (True, False):
        net.zero_grad()
        with fast_paths(enabled):
            out = net(x, samples=2, generator=torch.Generator().manual_seed(1))
        ms.nll_loss(out, y).backward()
        res.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in res[0][1])


def test_double_backward_raises_instead_of_being_wrong():
    p = LIFParameters()
    x = (torch.randn(5, 4) + 1.0).requires_grad_(True)
    s = lif_sequence_fused(x, p)
    (g,) = torch.autograd.grad((s * s * torch.arange(4.0)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("bias", [True, False])
def test_spike_linear_equals_baddbmm_and_saves_bool(bias):
    from mesu_snn.kernels import spike_linear
    torch.manual_seed(7)
    s = (torch.rand(3, 40, 16) < 0.3).double().requires_grad_(True)
    w = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, dtype=torch.float64, requires_grad=True) if bias else None
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.element_size()) or t, lambda t: t):
        y = spike_linear(s, w, b)
    assert 1 in sizes                                   # the spikes are kept as bool
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [s, w] + ([b] if bias else []), gy)
    ref = torch.baddbmm(b.unsqueeze(1), s, w.transpose(1, 2)) if bias else torch.bmm(s, w.transpose(1, 2))
    rgrads = torch.autograd.grad(ref, [s, w] + ([b] if bias else []), gy)
    assert torch.equal(y, ref)
    for a, r in zip(grads, rgrads):
        torch.testing.assert_close(a, r)
    with pytest.raises(ValueError, match="0 and 1"):
        spike_linear(s.detach() * 0.5, w, b, check=True)
    with pytest.raises(ValueError, match="expects s"):
        spike_linear(s[0], w, b)


@pytest.mark.parametrize("mode", ["sample", "mean", "frozen"])
def test_spiking_mlp_fast_path_modes(mode):
    """mean mode and sampled_weights() draws: the fast path uses the same weights as the layers."""
    from mesu_snn.kernels import fast_paths
    import mesu_snn as ms
    torch.manual_seed(8)
    net = ms.SpikingMLP([12, 10, 8, 3], readout="count", mu_init=2.0).double()
    if mode == "mean":
        net.mean_mode()
    x = (torch.rand(6, 4, 12) < 0.5).double()
    y = torch.randint(0, 3, (4,))
    res = []
    for enabled in (True, False):
        net.zero_grad()
        with fast_paths(enabled):
            if mode == "frozen":
                with ms.sampled_weights(net, 3, generator=torch.Generator().manual_seed(2)):
                    out = net(x, samples=3)
            else:
                out = net(x, samples=3, generator=torch.Generator().manual_seed(2))
        ms.nll_loss(out, y).backward()
        res.append((out.detach(), [p.grad.clone() if p.grad is not None else None for p in net.parameters()]))
    assert res[0][0].abs().sum() > 0
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1], res[1][1]):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (6,), (3, 2, 3, 3)])
def test_gaussian_weight_equals_reparameterised_expression(shape):
    """w = μ + σ·ε as one node: same values and (μ, σ) gradients as autograd of the expression,
    only ε saved for backward; bad shapes are a ValueError."""
    from mesu_snn.kernels import gaussian_weight
    g = torch.Generator().manual_seed(11)
    mu = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    eps = torch.randn((4, *shape), generator=g, dtype=torch.float64)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        w = gaussian_weight(mu, sigma, eps)
    assert len(saved) == 1 and saved[0] is eps
    ref = mu + sigma * eps
    torch.testing.assert_close(w, ref, rtol=1e-15, atol=1e-15)
    gw = torch.randn(w.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(w, (mu, sigma), gw)
    want = torch.autograd.grad(ref, (mu, sigma), gw)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], (gw * eps).sum(0))
    (only_mu,) = torch.autograd.grad(gaussian_weight(mu, sigma.detach(), eps), mu, gw)
    torch.testing.assert_close(only_mu, gw.sum(0))
    with pytest.raises(ValueError, match="gaussian_weight expects"):
        gaussian_weight(mu, sigma, eps[0])
    with pytest.raises(ValueError, match="gaussian_weight expects"):
        gaussian_weight(mu, sigma.detach()[..., :1], eps)


def test_spiking_mlp_fast_path_draws_the_layers_noise():
    """The fast path takes its ε from BayesianLayer.draw_noise on the caller's generator, layer
    by layer (the stream documented in synapses.py): reproducing the draws by hand gives the
    same logits as the network, with or without fast paths."""
    from mesu_snn.kernels import fast_paths
    import mesu_snn as ms
    torch.manual_seed(12)
    net = ms.SpikingMLP([9, 7, 4], readout="count", mu_init=2.0).double()
    x = (torch.rand(5, 3, 9) < 0.5).double()
    outs = []
    for enabled in (True, False):
        with fast_paths(enabled), torch.no_grad():
            outs.append(net(x, samples=2, generator=torch.Generator().manual_seed(4)))
    g = torch.Generator().manual_seed(4)
    noise = [layer.draw_noise(2, g) for layer in net.layers]
    with torch.no_grad(), fast_paths(False):
        h = net.layers[0]._apply_shared(x, *net.layers[0].sample_weights(2, noise=noise[0]))
        s = net.neurons[0](h.transpose(0, 1)).transpose(0, 1)
        h = net.layers[1]._apply_sampled(s, *net.layers[1].sample_weights(2, noise=noise[1]))
        manual = net.neurons[1](h.transpose(0, 1)).sum(0)
    assert manual.abs().sum() > 0
    for out in outs:
        torch.testing.assert_close(out, manual, rtol=1e-12, atol=1e-12)
