"""MESU's ``sigma_prior="init"``: one group per (μ, σ) pair whose prior σ is that pair's σ at
construction; a synapse without curvature relaxes back to its initial σ; the priors travel in
the optimizer's state; the fast (native, fused) and reference paths agree; bad values are named."""
import copy

import pytest
import torch

import mesu_snn as ms
from mesu_snn.kernels import fast_paths
from mesu_snn.models import SpikingMLP


def _net(seed=0, init="authors"):
    torch.manual_seed(seed)
    return SpikingMLP([20, 8, 3], init=init)


def _sigmas0(net):
    return {n: float(s.detach().flatten()[0]) for n, _, s in ms.bayesian_pairs(net)}


def test_groups_carry_each_layers_initial_sigma():
    net = _net()
    s0 = _sigmas0(net)
    assert len(set(s0.values())) == 2                      # init="authors": σ₀ differs per layer
    opt = ms.MESU(net, memory=1000, sigma_prior="init")
    got = {n: g["sigma_prior"] for g in opt.param_groups for n in g["names"]}
    assert got.keys() == s0.keys()
    for n in s0:
        assert got[n] == pytest.approx(s0[n], rel=1e-7)
    # a layer's weight and bias share σ₀, hence a group: one group per layer here
    assert sorted(g["names"] for g in opt.param_groups) == [["layers.0.weight", "layers.0.bias"],
                                                            ["layers.1.weight", "layers.1.bias"]]


def test_non_uniform_sigma_gets_a_per_synapse_prior():
    mu = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    s = torch.nn.Parameter(torch.linspace(0.01, 0.05, 5, dtype=torch.float64))
    opt = ms.MESU([(mu, s)], memory=100, sigma_prior="init", clamp_grad=None)
    prior = opt.param_groups[0]["sigma_prior"]
    assert isinstance(prior, torch.Tensor) and torch.equal(prior, s.detach())
    assert prior.data_ptr() != s.data_ptr()                # a copy: σ moving does not move the prior
    s.data.mul_(3.0)
    mu.grad, s.grad = torch.zeros_like(mu), torch.zeros_like(s)
    before = s.detach().clone()
    opt.step()
    # no data: Δσ = σ(σp² − σ²)/(2Nσp²) < 0 since σ = 3σp now
    exp = before + before * (prior ** 2 - before ** 2) / (2 * 100 * prior ** 2)
    torch.testing.assert_close(s.detach(), exp, rtol=1e-12, atol=0)


def test_without_curvature_sigma_relaxes_to_its_initial_value():
    mu = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    s = torch.nn.Parameter(torch.full((4,), 0.07, dtype=torch.float64))
    opt = ms.MESU([(mu, s)], memory=20, sigma_prior="init", clamp_grad=None)
    s.data.fill_(0.2)                                      # far from σ₀ after construction
    for _ in range(2000):
        mu.grad, s.grad = torch.zeros_like(mu), torch.zeros_like(s)
        opt.step()
    torch.testing.assert_close(s.detach(), torch.full((4,), 0.07, dtype=torch.float64), rtol=1e-6, atol=0)


def test_a_step_equals_per_layer_fixed_priors_and_paths_agree():
    net = _net(1)
    x = torch.rand(6, 5, 20)
    y = torch.randint(0, 3, (5,))
    ref = copy.deepcopy(net)

    def grads(model):
        torch.manual_seed(3)
        ms.set_mode(model, "sample")
        out = model(x, samples=2)
        ms.nll_loss(out, y).backward()

    s0 = _sigmas0(net)
    opt = ms.MESU(net, memory=500, sigma_prior="init")
    # the same as one explicit group per pair with that pair's σ₀
    pairs = ms.bayesian_pairs(ref)
    opt_ref = ms.MESU([{"pairs": [(mu, s)], "sigma_prior": s0[n]} for n, mu, s in pairs], memory=500)
    grads(net)
    grads(ref)
    net2 = copy.deepcopy(net)
    opt2 = ms.MESU(net2, memory=500, sigma_prior="init")
    for (_, a, b), (_, c, d) in zip(ms.bayesian_pairs(net), ms.bayesian_pairs(net2)):
        c.grad, d.grad = a.grad.clone(), b.grad.clone()
    opt.step()
    opt_ref.step()
    with fast_paths(False):
        opt2.step()
    for (n, a, b), (_, c, d), (_, e, f) in zip(ms.bayesian_pairs(net), ms.bayesian_pairs(ref), ms.bayesian_pairs(net2)):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(b, d, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)     # compiled loop vs torch ops: rounding
        torch.testing.assert_close(b, f, rtol=1e-6, atol=1e-8)


def test_priors_are_restored_from_the_state_dict():
    net = _net(2)
    s0 = _sigmas0(net)
    opt = ms.MESU(net, memory=100, sigma_prior="init")
    sd = copy.deepcopy(opt.state_dict())
    with torch.no_grad():                                  # a resumed model: σ has moved since init
        for _, _, s in ms.bayesian_pairs(net):
            s.mul_(0.5)
    opt2 = ms.MESU(net, memory=100, sigma_prior="init")
    assert opt2.param_groups[0]["sigma_prior"] == pytest.approx(0.5 * list(s0.values())[0], rel=1e-6)
    opt2.load_state_dict(sd)
    for g in opt2.param_groups:
        for n in g["names"]:
            assert g["sigma_prior"] == pytest.approx(s0[n], rel=1e-7)


def test_rule_and_config_accept_init_and_reject_other_strings():
    net = _net(3)
    rule = ms.rules.make_rule("mesu", net, memory=1000, sigma_prior="init")
    assert len(rule.optimizer.param_groups) == 2
    with pytest.raises(ValueError, match="sigma_prior"):
        ms.MESU(_net(3), memory=1000, sigma_prior="initial")
    with pytest.raises(ValueError, match="sigma_prior"):
        ms.rules.make_rule("mesu", _net(3), memory=1000, sigma_prior="foo")
    from mesu_snn.config import RuleConfig
    RuleConfig(name="mesu", params={"sigma_prior": "init", "memory": 1000}).validate()
    with pytest.raises(Exception, match="sigma_prior"):
        RuleConfig(name="mesu", params={"sigma_prior": "foo"}).validate()
    with pytest.raises(Exception, match="sigma_prior"):
        RuleConfig(name="bgd", params={"sigma_prior": "init"}).validate()


def test_online_rule_accepts_init():
    net = _net(4)
    rule = ms.rules.make_rule("mesu_online", net, memory=1000, sigma_prior="init", fixed_point_bits=8)
    s0 = _sigmas0(net)
    assert {n: g["sigma_prior"] for g in rule.optimizer.param_groups for n in g["names"]} == pytest.approx(s0)
