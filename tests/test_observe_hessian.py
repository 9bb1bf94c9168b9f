"""Hessian diagonal (exact double backward, Hutchinson) and importance measures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.observe.hessian import hessian_diagonal, hutchinson_diagonal, surrogate_loss
from mesu_snn.observe.importance import (SIPathIntegral, bgd_importance, compare_importances, correlations,
                                         ewc_fisher_diagonal, flatten, mesu_importance, si_importance)


def _tiny(double=True):
    torch.manual_seed(0)
    net = ms.SpikingMLP([4, 5, 3], beta=0.8, surrogate=("fast_sigmoid", 5.0))
    x, y = torch.rand(6, 8, 4) * 2, torch.randint(0, 3, (8,))
    if double:
        net, x = net.double(), x.double()
    return net, x, y


def test_exact_diagonal_matches_finite_differences_of_the_surrogate_gradient():
    """Output layer of a membrane readout: no spike between μ and the loss, so the surrogate
    Hessian equals the finite-difference derivative of the surrogate gradient."""
    net, x, y = _tiny()
    H = hessian_diagonal(net, x, y)
    assert set(H) == {n for n, _, _ in ms.bayesian_pairs(net)}
    mu = net.layers[1].weight_mu
    hv = H["layers.1.weight"]
    assert hv.shape == mu.shape and hv.abs().max() > 0
    checked = 0
    for i in torch.argsort(hv.reshape(-1).abs(), descending=True)[:4].tolist():
        eps, g = 1e-6, []
        for sgn in (1, -1):
            with torch.no_grad():
                mu.view(-1)[i] += sgn * eps
            g.append(torch.autograd.grad(surrogate_loss(net, x, y), mu)[0].reshape(-1)[i])
            with torch.no_grad():
                mu.view(-1)[i] -= sgn * eps
        fd = float((g[0] - g[1]) / (2 * eps))
        assert fd == pytest.approx(float(hv.reshape(-1)[i]), rel=1e-4, abs=1e-8)
        checked += 1
    assert checked == 4


def test_exact_diagonal_equals_rows_of_the_full_hessian():
    """Hidden layer: every diagonal entry equals entry i of the i-th Hessian row computed as a
    Hessian-vector product with a one-hot vector over all μ jointly."""
    net, x, y = _tiny()
    H = hessian_diagonal(net, x, y)
    mus = [mu for _, mu, _ in ms.bayesian_pairs(net)]
    grads = torch.autograd.grad(surrogate_loss(net, x, y), mus, create_graph=True)
    for i in (0, 7, 13):
        e = [torch.zeros_like(m) for m in mus]
        e[0].view(-1)[i] = 1.0
        row = torch.autograd.grad(grads, mus, grad_outputs=e, retain_graph=True)
        assert float(row[0].reshape(-1)[i]) == pytest.approx(float(H["layers.0.weight"].reshape(-1)[i]), rel=1e-9)
    assert H["layers.0.weight"].abs().sum() > 0


def test_hutchinson_is_exact_on_a_diagonal_quadratic_and_converges_on_the_network():
    layer = ms.BayesLinear(6, 4)
    h = torch.rand(4, 6) + 0.1
    Q = torch.randn(24, 24) * 0.05
    Q = Q + Q.T

    def quad(model):
        w = model.weight_mu.reshape(-1)
        return 0.5 * (h.reshape(-1) * w * w).sum() + 0.5 * w @ Q @ w

    exact = hessian_diagonal(layer, loss_fn=quad)["weight"]
    torch.testing.assert_close(exact, h + torch.diagonal(Q).reshape(4, 6))
    est = hutchinson_diagonal(layer, loss_fn=quad, n_samples=4000, seed=1)["weight"]
    assert float((est - exact).abs().max()) < 0.08                    # off-diagonal noise averages out
    net, x, y = _tiny(double=False)
    ex = flatten(hessian_diagonal(net, x, y))
    hu = flatten(hutchinson_diagonal(net, x, y, n_samples=300, seed=0))
    assert correlations(hu, ex)["pearson"] > 0.9
    again = flatten(hutchinson_diagonal(net, x, y, n_samples=300, seed=0))
    np.testing.assert_array_equal(hu, again)                          # seeded


def test_mean_network_versus_a_fixed_draw():
    net, x, y = _tiny()
    with torch.no_grad():
        for _, _, s in ms.bayesian_pairs(net):
            s.fill_(0.3)
    mean = flatten(hessian_diagonal(net, x, y, weights="mean"))
    d1 = flatten(hessian_diagonal(net, x, y, weights="draw", generator=torch.Generator().manual_seed(5)))
    d2 = flatten(hessian_diagonal(net, x, y, weights="draw", generator=torch.Generator().manual_seed(5)))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(mean, d1)
    assert net.layers[0].mode == "sample"                             # mode restored
    with pytest.raises(ValueError, match="weights"):
        surrogate_loss(net, x, y, weights="mode")
    with pytest.raises(ValueError, match="hutchinson"):
        hessian_diagonal(net, x, y, max_entries=10)


def test_correlations_and_pure_importances():
    a = np.arange(10.0)
    assert correlations(a, 3 * a + 1)["pearson"] == pytest.approx(1.0)
    c = correlations(a, np.exp(a))
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] < 0.9
    assert correlations(a, -a)["spearman"] == pytest.approx(-1.0)
    t = np.array([1.0, 2, 2, 3, 5]), np.array([2.0, 1, 4, 4, 6])
    from scipy.stats import pearsonr, spearmanr
    assert correlations(*t)["spearman"] == pytest.approx(spearmanr(*t)[0])
    assert correlations(*t)["pearson"] == pytest.approx(pearsonr(*t)[0])
    s = torch.tensor([0.1, 0.05, 0.01])
    torch.testing.assert_close(mesu_importance(s, 0.1, 100.0), (s.double() ** -2 - 100.0) / 100.0)
    torch.testing.assert_close(bgd_importance(s), s.double() ** -2)
    torch.testing.assert_close(si_importance(torch.tensor([1.0]), torch.tensor([2.0]), 1.0), torch.tensor([0.2], dtype=torch.float64))
    with pytest.raises(ValueError):
        correlations(a, a[:3])


def test_mesu_importance_tracks_the_hessian_on_a_quadratic():
    """MESU on L = ½ Σ h (w − m)², w = μ + σε: at the fixed point (1/σ² − 1/σ_p²)/N ≈ h."""
    torch.manual_seed(0)
    layer = ms.BayesLinear(8, 4, bias=False, sigma_init=0.05)
    h = torch.logspace(-1, 1, 32).reshape(4, 8)
    opt = ms.MESU(layer, memory=50, sigma_prior=1.0, clamp_grad=None)
    bgd = ms.BGD(ms.BayesLinear(8, 4, bias=False, sigma_init=0.05))
    for _ in range(3000):
        w = layer.sample_weights(1)[0][0]
        loss = 0.5 * (h * (w - 0.2) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    H = hessian_diagonal(layer, loss_fn=lambda m: 0.5 * (h * (m.weight_mu - 0.2) ** 2).sum())
    imp = {"MESU": {"weight": mesu_importance(layer.weight_sigma, 1.0, 50)},
           "BGD": {"weight": bgd_importance(bgd.param_groups[0]["params"][1])}}
    r = compare_importances(H, imp)
    assert r["MESU"]["spearman"] > 0.95 and r["MESU"]["pearson"] > 0.9
    assert np.isnan(r["BGD"]["pearson"])                               # untrained BGD: σ constant
    ratio = flatten(imp["MESU"]) / flatten(H)
    assert 0.5 < np.median(ratio) < 2.0                                # right scale, not only rank


def test_ewc_fisher_and_si():
    net, x, y = _tiny(double=False)
    F = ewc_fisher_diagonal(net, x, y)
    # by hand for sample 0
    ms.set_mode(net, "mean")
    g0 = torch.autograd.grad(ms.nll_loss(net(x[:, :1], samples=1), y[:1]), net.layers[1].weight_mu)[0]
    gs = [torch.autograd.grad(ms.nll_loss(net(x[:, b:b + 1], samples=1), y[b:b + 1]), net.layers[1].weight_mu)[0]
          for b in range(8)]
    ms.set_mode(net, "sample")
    torch.testing.assert_close(F["layers.1.weight"], torch.stack(gs).double().pow(2).mean(0))
    assert g0.abs().sum() > 0 and torch.all(F["layers.1.weight"] >= 0)
    opt = ms.MESU(net, memory=100)
    si = SIPathIntegral(net, xi=0.1)
    for _ in range(3):
        loss = ms.nll_loss(net(x, samples=2), y)
        opt.zero_grad()
        loss.backward()
        si.before_step()
        opt.step()
        si.after_step()
    w = si.importance()
    assert w["layers.0.weight"].shape == net.layers[0].weight_mu.shape
    assert float(flatten(w).sum()) > 0                                  # descent: −g·Δθ > 0 on the whole
