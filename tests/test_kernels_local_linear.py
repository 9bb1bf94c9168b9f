"""kernels.local_linear and the estimator="local" option of BayesLinear / SpikingMLP.

Statistical tests (fixed seeds, float64): the sampled pre-activations have the exact mean and
T × T covariance (every entry within 5 standard errors), the same law as weight sampling (two-sample
KS, p > 1e-3), and the gradient estimates of μ and σ are unbiased: their mean over independent
chunks matches the exact gradient of E[C] (quadratic loss) and the weight-sampling estimator's mean
(non-linear loss, a spiking network), each entry within 5 standard errors of the difference.
"""
from __future__ import annotations

import pytest
import torch
from scipy import stats

import mesu_snn as ms
import importlib
from mesu_snn import BayesLinear, SpikingMLP, sampled_weights
from mesu_snn.functional.local_reparam import preactivation_moments
from mesu_snn.kernels.local_linear import local_linear

Z_TOL = 5.0   # standard errors


def _case(t=4, b=2, n_in=7, j=3, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(t, b, n_in, generator=g, dtype=torch.float64) < 0.5).double()
    if t > 2:
        x[2] = x[1]                      # a repeated step: singular covariance
    x[..., 0] = 0                        # a silent input
    mu = torch.randn(j, n_in, generator=g, dtype=torch.float64).requires_grad_()
    sig = (torch.rand(j, n_in, generator=g, dtype=torch.float64) * 0.5 + 0.1).requires_grad_()
    bm = bs = None
    if bias:
        bm = torch.randn(j, generator=g, dtype=torch.float64).requires_grad_()
        bs = (torch.rand(j, generator=g, dtype=torch.float64) * 0.3 + 0.1).requires_grad_()
    return x, mu, sig, bm, bs


def _weight_path(x, mu, sig, bm, bs, m, gen):
    eps = torch.randn(m, *mu.shape, generator=gen, dtype=mu.dtype)
    w = mu + sig * eps
    a = torch.einsum("tbi,mji->mtbj", x, w)
    if bm is not None:
        a = a + (bm + bs * torch.randn(m, *bm.shape, generator=gen, dtype=mu.dtype))[:, None, None, :]
    return a


def _check_moments(a, mean, cov):
    m = a.shape[0]
    d = a.detach() - mean.detach()
    emp_mean = d.mean(0)                                              # (T, B, J)
    var = torch.diagonal(cov, dim1=-2, dim2=-1).permute(2, 0, 1)      # (T, B, J)
    assert (emp_mean.abs() <= Z_TOL * (var / m).sqrt() + 1e-12).all()
    emp_cov = torch.einsum("mtbj,msbj->bjts", d, d) / m
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    se = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + cov ** 2) / m).sqrt()
    assert ((emp_cov - cov).abs() <= Z_TOL * se + 1e-12).all()


@pytest.mark.parametrize("t", [1, 4])
def test_output_law_is_exact(t):
    x, mu, sig, bm, bs = _case(t=t)
    mean, cov = preactivation_moments(x, mu, sig, bm, bs)
    gen = torch.Generator().manual_seed(1)
    a = local_linear(x, mu, sig, bm, bs, samples=40_000, generator=gen)
    assert a.shape == (40_000, t, 2, 3)
    _check_moments(a, mean, cov)
    aw = _weight_path(x, mu, sig, bm, bs, 40_000, gen)
    _check_moments(aw, mean, cov)
    for ti, bi, j in [(0, 0, 0), (t - 1, 1, 2), (t // 2, 0, 1)]:       # the same law, coordinate-wise
        assert stats.ks_2samp(a[:, ti, bi, j].detach(), aw[:, ti, bi, j].detach()).pvalue > 1e-3
    # a linear functional across time (the joint law): Σ_t c_t a(t)
    c = torch.randn(t, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert stats.ks_2samp((a[:, :, 1, 0].detach() @ c), (aw[:, :, 1, 0].detach() @ c)).pvalue > 1e-3


def test_batch_elements_are_independent_under_local_only():
    """The documented difference: with shared weights, examples b, b' are correlated
    (Cov = Σ_i σ² x_b x_b'); the local estimator draws them independently (Cov = 0)."""
    x, mu, sig, _, _ = _case(t=1, b=2, bias=False)
    x[0, 1] = x[0, 0]                                     # two identical examples: correlation 1 under weights
    m = 40_000
    gen = torch.Generator().manual_seed(3)
    a = local_linear(x, mu, sig, samples=m, generator=gen).detach()
    aw = _weight_path(x, mu, sig, None, None, m, gen).detach()
    corr_local = torch.corrcoef(torch.stack([a[:, 0, 0, 0], a[:, 0, 1, 0]]))[0, 1]
    corr_weights = torch.corrcoef(torch.stack([aw[:, 0, 0, 0], aw[:, 0, 1, 0]]))[0, 1]
    assert abs(corr_local) < Z_TOL / m ** 0.5 and corr_weights > 0.999


def _chunked_grads(fn, params, chunks):
    """Mean and standard error over independent chunks of the gradient estimates fn() -> loss."""
    per = []
    for _ in range(chunks):
        for p in params:
            p.grad = None
        fn().backward()
        per.append(torch.cat([p.grad.flatten() for p in params]))
    per = torch.stack(per)
    return per.mean(0), per.std(0) / chunks ** 0.5


@pytest.mark.parametrize("t", [1, 4])
def test_gradients_unbiased_exact_expectation(t):
    """Quadratic loss C = Σ c·a² + d·a: ∂E[C]/∂μ and ∂E[C]/∂σ in closed form."""
    x, mu, sig, bm, bs = _case(t=t)
    params = [mu, sig, bm, bs]
    g = torch.Generator().manual_seed(4)
    c = torch.randn(t, 2, 3, dtype=torch.float64, generator=g)
    d = torch.randn(t, 2, 3, dtype=torch.float64, generator=g)
    m = 2000
    gen = torch.Generator().manual_seed(5)

    def loss():
        a = local_linear(x, mu, sig, bm, bs, samples=m, generator=gen)
        return (c * a ** 2 + d * a).sum() / m
    mean_g, se = _chunked_grads(loss, params, 30)
    # exact: E[a²] = mean² + var, var = Σ_i σ² x² + σ_b²
    mean = torch.einsum("tbi,ji->tbj", x, mu) + bm
    coef = 2 * c * mean + d                                            # ∂E/∂mean
    exact = [torch.einsum("tbj,tbi->ji", coef, x), torch.einsum("tbj,tbi->ji", 2 * c, x ** 2) * sig,
             coef.sum((0, 1)), 2 * c.sum((0, 1)) * bs]
    exact = torch.cat([e.flatten() for e in exact]).detach()
    assert ((mean_g - exact).abs() <= Z_TOL * se + 1e-9).all()
    assert se.max() > 0


def test_gradients_unbiased_against_weight_sampling():
    """Non-linear loss through time: the local and weight estimators have the same mean, and the
    local σ-gradient (a conditional expectation of the weight one) has no more variance."""
    x, mu, sig, bm, bs = _case(t=5, b=2)
    params = [mu, sig, bm, bs]
    g = torch.Generator().manual_seed(6)
    c = torch.randn(5, 2, 3, dtype=torch.float64, generator=g)
    m = 2000

    def nonlinear(a):     # a leaky integration over time, a non-linearity coupling neurons and steps
        v = torch.zeros_like(a[:, 0])
        out = 0
        for ti in range(a.shape[1]):
            v = 0.8 * v + a[:, ti]
            out = out + (c[ti] * torch.tanh(v)).sum(-1)             # (M, B)
        # a sum over examples (as every training loss here): a loss coupling the examples of a batch
        # (e.g. softplus of a sum over b) has a different expectation under the two estimators
        return torch.nn.functional.softplus(out).sum() / a.shape[0]
    gl = torch.Generator().manual_seed(7)
    gw = torch.Generator().manual_seed(8)
    mean_l, se_l = _chunked_grads(lambda: nonlinear(local_linear(x, mu, sig, bm, bs, samples=m, generator=gl)),
                                  params, 30)
    mean_w, se_w = _chunked_grads(lambda: nonlinear(_weight_path(x, mu, sig, bm, bs, m, gw)), params, 30)
    tol = Z_TOL * (se_l ** 2 + se_w ** 2).sqrt() + 1e-9
    assert ((mean_l - mean_w).abs() <= tol).all()
    n_mu = mu.numel()
    sig_slice = slice(n_mu, 2 * n_mu)
    assert (se_l[sig_slice] ** 2).sum() <= (se_w[sig_slice] ** 2).sum()


def test_time_constant_input_is_rank_one_and_constant():
    x, mu, sig, bm, bs = _case(t=1)
    xc = x.expand(6, *x.shape[1:]).clone()
    gen = torch.Generator().manual_seed(9)
    a = local_linear(xc, mu, sig, bm, bs, samples=20_000, generator=gen)
    assert torch.equal(a[:, 0], a[:, 5])
    mean, cov = preactivation_moments(xc, mu, sig, bm, bs)
    _check_moments(a, mean, cov)
    a.sum().backward()
    # ∂/∂μ of Σ a = M·T·Σ_b x exactly (the noise has no μ dependence)
    torch.testing.assert_close(mu.grad, 20_000 * 6 * x[0].sum(0).expand_as(mu))


def test_dropping_silent_columns_changes_nothing(monkeypatch):
    g = torch.Generator().manual_seed(10)
    x = torch.zeros(6, 2, 40, dtype=torch.float64)
    x[..., :8] = (torch.rand(6, 2, 8, generator=g, dtype=torch.float64) < 0.5).double()
    layer = BayesLinear(40, 5).double()
    outs = []
    for frac in (0.0, 1.01):          # never / always drop silent columns
        monkeypatch.setattr(importlib.import_module("mesu_snn.kernels.local_linear"), "_SPARSE_FRACTION", frac)
        layer.zero_grad(set_to_none=True)
        y = local_linear(x, layer.weight_mu, layer.weight_sigma, layer.bias_mu, layer.bias_sigma, samples=3,
                         generator=torch.Generator().manual_seed(11))
        (y * torch.arange(5, dtype=torch.float64)).sum().backward()
        outs.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    assert outs[0][2][:, 8:].abs().max() == 0          # σ-gradient of silent inputs


def test_bayeslinear_option_and_errors():
    with pytest.raises(ValueError, match="estimator"):
        BayesLinear(4, 3, estimator="pre-activations")
    layer = BayesLinear(4, 3, estimator="local")
    assert "estimator='local'" in repr(layer)
    x = torch.rand(5, 2, 4)
    y1 = layer(x, samples=6, generator=torch.Generator().manual_seed(0))
    y2 = layer(x, samples=6, generator=torch.Generator().manual_seed(0))
    assert y1.shape == (6, 5, 2, 3) and torch.equal(y1, y2)
    assert layer(x[0], samples=6).shape == (6, 2, 3) and layer(x[0, 0], samples=6).shape == (6, 3)
    with pytest.raises(ValueError, match="must not require grad"):
        layer(x.requires_grad_(), samples=2)
    x = x.detach()
    # mean mode, sampled_weights(), per-sample input and a single call use the weights (exact) path
    layer.mode = "mean"
    torch.testing.assert_close(layer(x, samples=3)[0], x @ layer.weight_mu.t() + layer.bias_mu)
    layer.mode = "sample"
    with sampled_weights(layer, 2, torch.Generator().manual_seed(1)):
        ew, eb = layer._frozen[1]
        w = layer.weight_mu + layer.weight_sigma * ew
        torch.testing.assert_close(layer(x, samples=2), torch.einsum("tbi,mji->mtbj", x, w)
                                   + (layer.bias_mu + layer.bias_sigma * eb)[:, None, None, :])
    layer.eval()
    assert layer(x).shape == (5, 2, 3)             # no samples, eval(): the mean network
    layer.train()
    with pytest.raises(ValueError, match="samples"):
        local_linear(x, layer.weight_mu, layer.weight_sigma, samples=0)


def test_spiking_mlp_local_same_output_law_and_gradients():
    """SpikingMLP 12-6-3 (membrane readout, continuous): per output the local estimator's law
    equals the weight estimator's (KS), and the mean gradients agree (5 standard errors)."""
    torch.manual_seed(0)
    ref = SpikingMLP([12, 6, 3], sigma_init=1.0, readout="membrane").double()
    loc = SpikingMLP([12, 6, 3], sigma_init=1.0, readout="membrane", estimator="local").double()
    loc.load_state_dict(ref.state_dict())
    assert loc.layers[0].estimator == "local" and loc.layers[1].estimator == "weights"
    g = torch.Generator().manual_seed(12)
    x = (torch.rand(6, 1, 12, generator=g) < 0.5).double()
    y = torch.tensor([1])
    m = 4000
    with torch.no_grad():
        oa = ref(x, samples=m, generator=torch.Generator().manual_seed(13))
        ob = loc(x, samples=m, generator=torch.Generator().manual_seed(14))
    for k in range(3):
        assert stats.ks_2samp(oa[:, 0, k], ob[:, 0, k]).pvalue > 1e-3
    gref, gloc = torch.Generator().manual_seed(15), torch.Generator().manual_seed(16)

    def chunks(net, gen):
        return _chunked_grads(lambda: ms.nll_loss(net(x, samples=500, generator=gen), y),
                              list(net.parameters()), 40)
    mr, sr = chunks(ref, gref)
    ml, sl = chunks(loc, gloc)
    assert ((mr - ml).abs() <= Z_TOL * (sr ** 2 + sl ** 2).sqrt() + 1e-9).all()
    assert sl.max() > 0
