"""The fused (foreach) MESU/BGD steps equal the pure functions; optimizers use them."""
from __future__ import annotations

import pytest
import torch

import mesu_snn as ms
from mesu_snn.functional.bgd import bgd_update
from mesu_snn.functional.mesu import mesu_update
from mesu_snn.kernels.fused_update import all_finite, fused_bgd_step, fused_mesu_step

SHAPES = [(7, 5), (5,), (3, 2, 4)]


def _pairs(dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(3)
    mus = [torch.randn(s, generator=g, dtype=dtype) * 0.2 for s in SHAPES]
    sig = [torch.rand(s, generator=g, dtype=dtype) * 0.05 + 0.01 for s in SHAPES]
    gm = [torch.randn(s, generator=g, dtype=dtype) * scale for s in SHAPES]
    gs = [torch.randn(s, generator=g, dtype=dtype) * scale for s in SHAPES]
    return mus, sig, gm, gs


@pytest.mark.parametrize("clamp", [0.5, None])
@pytest.mark.parametrize("mu_prior", [0.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, 300.0])      # 300: most gradients hit the clamp
def test_fused_mesu_equals_pure(clamp, mu_prior, scale):
    mus, sig, gm, gs = _pairs(scale=scale)
    kw = dict(memory=50.0, sigma_prior=0.07, mu_prior=mu_prior, lr_mu=0.8, lr_sigma=1.3, clamp_grad=clamp)
    want = [mesu_update(m, s, a, b, **kw) for m, s, a, b in zip(mus, sig, gm, gs)]
    fused_mesu_step(mus, sig, gm, gs, **kw)
    for (wm, ws), m, s in zip(want, mus, sig):
        torch.testing.assert_close(m, wm, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s, ws, rtol=1e-12, atol=1e-14)
    assert not torch.equal(mus[0], _pairs(scale=scale)[0][0])   # it did move


def test_fused_bgd_equals_pure():
    mus, sig, gm, gs = _pairs(scale=20.0)
    want = [bgd_update(m, s, a, b, lr=0.7) for m, s, a, b in zip(mus, sig, gm, gs)]
    fused_bgd_step(mus, sig, gm, gs, lr=0.7)
    for (wm, ws), m, s in zip(want, mus, sig):
        torch.testing.assert_close(m, wm, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s, ws, rtol=1e-12, atol=1e-14)
        assert bool((s > 0).all())


def test_fused_float32_close():
    mus, sig, gm, gs = _pairs(torch.float32, scale=5.0)
    kw = dict(memory=1e4, sigma_prior=0.1)
    want = [mesu_update(m, s, a, b, **kw) for m, s, a, b in zip(mus, sig, gm, gs)]
    fused_mesu_step(mus, sig, gm, gs, **kw)
    for (wm, ws), m, s in zip(want, mus, sig):
        torch.testing.assert_close(m, wm, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s, ws, rtol=1e-6, atol=1e-7)


def test_fused_update_bad_lists():
    mus, sig, gm, gs = _pairs()
    with pytest.raises(ValueError, match="equally long"):
        fused_mesu_step(mus, sig[:2], gm, gs, memory=1.0, sigma_prior=0.1)
    with pytest.raises(ValueError, match="shape"):
        fused_bgd_step(mus, sig, gm[::-1], gs)


def test_all_finite():
    assert all_finite([torch.ones(3), torch.zeros(2, 2)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("-inf")]), torch.ones(1)])
    assert all_finite([])


@pytest.mark.parametrize("rule", ["mesu", "bgd"])
def test_optimizer_fused_equals_per_pair(rule):
    """One training step with the fused update and one with the readable per-pair update."""
    torch.manual_seed(0)
    x = (torch.rand(6, 8, 20) < 0.3).float()
    y = torch.randint(0, 4, (8,))
    states = []
    for fused in (True, False):
        torch.manual_seed(1)
        net = ms.SpikingMLP([20, 16, 4], readout="count").double()
        opt = ms.MESU(net, memory=100.0) if rule == "mesu" else ms.BGD(net, lr=1.0)
        gen = torch.Generator().manual_seed(5)
        for _ in range(3):
            loss = ms.nll_loss(net(x.double(), samples=3, generator=gen), y)
            opt.zero_grad()
            loss.backward()
            with ms.kernels.fast_paths(fused):
                opt.step()
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-10, atol=1e-12)


def test_optimizer_nonfinite_guard_with_fused_update():
    net = ms.SpikingMLP([5, 4, 3])
    opt = ms.MESU(net, on_nonfinite="skip")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _, mu, s in ms.bayesian_pairs(net):
        mu.grad = torch.ones_like(mu)
        s.grad = torch.ones_like(s)
    net.layers[1].weight_sigma.grad[0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    opt.on_nonfinite = "raise"
    with pytest.raises(FloatingPointError, match="layers.1.weight_sigma"):
        opt.step()


def test_all_finite_overflowing_sum_is_not_a_false_alarm():
    big = torch.full((4,), 3e38)          # finite, but the sum overflows to inf
    assert all_finite([big, torch.ones(2)])
    assert not all_finite([big, torch.tensor([float("nan")])])


@pytest.mark.parametrize("rule", ["mesu", "bgd"])
def test_guarded_update_equals_step_and_skips_bad_grads(rule):
    """The sync-free guarded update (CUDA-graph path) equals opt.step(); NaN grads change nothing."""
    from mesu_snn.rules import guarded_update
    nets = []
    for _ in range(2):
        torch.manual_seed(6)
        nets.append(ms.SpikingMLP([6, 5, 3]).double())
    opts = [ms.MESU(n, memory=20.0, sigma_prior=0.3) if rule == "mesu" else ms.BGD(n, lr=0.5) for n in nets]
    for n in nets:
        for p in n.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) * 3
    opts[0].step()
    ok = guarded_update(opts[1])
    assert ok.dtype == torch.bool and bool(ok)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    before = [p.detach().clone() for p in nets[1].parameters()]
    nets[1].layers[0].weight_mu.grad[0, 0] = float("inf")
    assert not bool(guarded_update(opts[1]))
    for a, b in zip(before, nets[1].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="MESU and BGD"):
        guarded_update(torch.optim.SGD(nets[0].parameters(), lr=0.1))


def test_graphed_step_refuses_cpu():
    from mesu_snn.rules import GraphedTrainStep
    net = ms.SpikingMLP([4, 3, 2])
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainStep(net, ms.MESU(net), torch.zeros(2, 1, 4), torch.zeros(1, dtype=torch.long), samples=2)


def test_subclass_with_own_rule_uses_its_update():
    """A MESU subclass that overrides _update is not bypassed by the fused path."""
    class HalfMESU(ms.MESU):
        def _update(self, mu, sigma, gmu, gsigma, g):
            new_mu, new_sigma = super()._update(mu, sigma, gmu, gsigma, g)
            return mu + 0.5 * (new_mu - mu), new_sigma

    torch.manual_seed(0)
    net = ms.SpikingMLP([4, 3, 2]).double()
    ref = ms.SpikingMLP([4, 3, 2]).double()
    ref.load_state_dict(net.state_dict())
    for n in (net, ref):
        for p in n.parameters():
            p.grad = torch.full_like(p, 2.0)
    HalfMESU(net, memory=10.0).step()
    plain = ms.MESU(ref, memory=10.0)
    plain.step()
    mu0 = ref.layers[0].weight_mu.detach()
    assert not torch.allclose(net.layers[0].weight_mu, mu0)
    torch.testing.assert_close(net.layers[0].weight_sigma, ref.layers[0].weight_sigma)
