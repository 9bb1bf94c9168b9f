"""The trainer's rules: modes, frozen σ, loss reductions, and online EWC / SI against their
defining equations on a tiny spiking network."""
import copy

import pytest
import torch

import mesu_snn as ms
from mesu_snn.losses import nll_loss
from mesu_snn.rules import make_rule
from mesu_snn.rules import RULES


def _net(seed=0):
    torch.manual_seed(seed)
    return ms.SpikingMLP([6, 5, 3], sigma_init=0.5)


def _batch(seed=1, b=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(4, b, 6, generator=g) * 2, torch.randint(0, 3, (b,), generator=g)


def _train_step(rule, x, y, m=3):
    out = rule.model(x, samples=m if rule.bayesian else 1)
    loss = rule.loss(out, y)
    rule.zero_grad()
    loss.backward()
    rule.step()
    return loss


@pytest.mark.parametrize("name", RULES)
def test_every_rule_builds_and_steps(name):
    net = _net()
    rule = make_rule(name, net)
    x, y = _batch()
    mu0 = [mu.detach().clone() for _, mu, _ in ms.bayesian_pairs(net)]
    s0 = [s.detach().clone() for _, _, s in ms.bayesian_pairs(net)]
    _train_step(rule, x, y)
    mus = [mu for _, mu, _ in ms.bayesian_pairs(net)]
    sig = [s for _, _, s in ms.bayesian_pairs(net)]
    assert any(not torch.equal(a, b) for a, b in zip(mu0, mus)), "μ must move"
    if rule.bayesian:
        assert all(l.mode == "sample" for l in net.layers)
        assert any(not torch.equal(a, b) for a, b in zip(s0, sig)), "σ is learned by Bayesian rules"
        assert rule.bayesian
    else:
        assert all(l.mode == "mean" for l in net.layers)
        assert all(torch.equal(a, b) for a, b in zip(s0, sig)), "σ frozen for point-estimate rules"
        assert all(not s.requires_grad for s in sig)
        assert not rule.bayesian
    assert rule.uses_task_boundaries == (name in ("ewc", "si"))


def test_reductions_sum_for_mesu_and_bgd_mean_for_the_others():
    x, y = _batch()
    out = torch.randn(2, 8, 3)
    for name in ("mesu", "bgd"):      # BGD: Zeno et al.'s code multiplies the mean-loss gradient by B
        assert make_rule(name, _net()).data_loss(out, y) == pytest.approx(float(nll_loss(out, y)))
    for name in ("sgd", "adam", "ewc", "si"):
        assert make_rule(name, _net()).data_loss(out, y) == pytest.approx(float(nll_loss(out, y)) / 8)


def test_sgd_rule_is_plain_sgd_on_mu():
    net = _net()
    rule = make_rule("sgd", net, lr=0.1)
    x, y = _batch()
    mu0 = net.layers[0].weight_mu.detach().clone()
    out = net(x, samples=1)
    loss = nll_loss(out, y) / 8
    g = torch.autograd.grad(loss, net.layers[0].weight_mu)[0]
    _train_step(rule, x, y)
    assert torch.allclose(net.layers[0].weight_mu, mu0 - 0.1 * g, atol=1e-7)


def test_unknown_rule_and_hyperparameter():
    with pytest.raises(ValueError, match="unknown rule"):
        make_rule("rmsprop", _net())
    with pytest.raises(ValueError, match="lrr"):
        make_rule("sgd", _net(), lrr=0.1)
    with pytest.raises(ValueError):
        make_rule("ewc", _net(), gamma=2.0)
    with pytest.raises(ValueError):
        make_rule("si", _net(), base="lbfgs")


def test_online_ewc_fisher_penalty_and_decay():
    net = _net()
    rule = make_rule("ewc", net, lr=0.05, ewc_lambda=10.0, gamma=0.5, fisher_samples=5)
    x, y = _batch(b=8)
    assert rule.penalty() is None                     # nothing consolidated yet
    _train_step(rule, x, y)
    params = rule.params
    # expected Fisher: mean over the first 5 samples of squared per-sample NLL gradients, at θ_1
    exp = [torch.zeros_like(p) for p in params]
    for i in range(5):
        gs = torch.autograd.grad(nll_loss(net(x[:, i:i + 1], samples=1), y[i:i + 1]), params)
        for e, g in zip(exp, gs):
            e += g.pow(2) / 5
    theta1 = [p.detach().clone() for p in params]
    rule.end_task(0, lambda: iter([(x, y)]))
    for f, e in zip(rule.fisher, exp):
        assert torch.allclose(f, e, rtol=1e-5, atol=1e-9)
    assert all(torch.equal(a, t) for a, t in zip(rule.anchor, theta1))
    assert rule.penalty().item() == pytest.approx(0.0, abs=1e-12)   # at the anchor
    # move away: penalty = λ/2 Σ F (θ − θ*)²
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    want = 0.5 * 10.0 * sum((f * 0.01).sum() for f in rule.fisher)
    assert rule.penalty().item() == pytest.approx(float(want), rel=1e-5)
    # second boundary: F̃ = γ F̃ + F_new
    old = [f.clone() for f in rule.fisher]
    rule.end_task(1, lambda: iter([(x, y)]))
    new = rule.fisher_diagonal(iter([(x, y)]))
    for f, o, n in zip(rule.fisher, old, new):
        assert torch.allclose(f, 0.5 * o + n, rtol=1e-5, atol=1e-9)
    assert rule.tasks_consolidated == 2


def test_si_path_integral_and_importance():
    net = _net()
    lr, c, xi = 0.05, 0.5, 1e-3
    rule = make_rule("si", net, lr=lr, si_c=c, xi=xi)
    x, y = _batch()
    p0 = [p.detach().clone() for p in rule.params]
    # one SGD step: Δθ = −lr g, so ω = −g·Δθ = lr g²
    out = net(x, samples=1)
    grads = torch.autograd.grad(nll_loss(out, y) / 8, rule.params)
    _train_step(rule, x, y)
    for om, g in zip(rule.omega, grads):
        assert torch.allclose(om, lr * g.pow(2), atol=1e-9)
    rule.end_task(0, lambda: iter(()))
    for w, g, p, a in zip(rule.importance, grads, rule.params, p0):
        want = lr * g.pow(2) / ((p.detach() - a).pow(2) + xi)
        assert torch.allclose(w, want, rtol=1e-3, atol=1e-5 * float(want.max()))   # float32 Δθ rounding
    assert all(torch.equal(o, torch.zeros_like(o)) for o in rule.omega)
    # after consolidation the path integral uses the data gradient only (penalty gradient removed)
    with torch.no_grad():
        for p in rule.params:
            p.add_(0.05)
    x2, y2 = _batch(seed=5)
    before = [p.detach().clone() for p in rule.params]
    data_g = torch.autograd.grad(nll_loss(net(x2, samples=1), y2) / 8, rule.params)
    _train_step(rule, x2, y2)
    for om, g, p, b in zip(rule.omega, data_g, rule.params, before):
        assert torch.allclose(om, -g * (p.detach() - b), atol=1e-8)
    # penalty value c Σ Ω (θ − θ*)²
    want = c * sum((w * (p.detach() - a).pow(2)).sum() for w, p, a in zip(rule.importance, rule.params, rule.anchor))
    assert rule.penalty().item() == pytest.approx(float(want), rel=1e-6)


def test_rule_state_round_trip():
    x, y = _batch()
    for name in ("ewc", "si", "adam", "mesu"):
        a, b = make_rule(name, _net()), make_rule(name, _net())
        _train_step(a, x, y)
        a.end_task(0, lambda: iter([(x, y)]))
        _train_step(a, x, y)
        b.model.load_state_dict(a.model.state_dict())
        b.load_state_dict(copy.deepcopy(a.state_dict()))    # as from a checkpoint file: no shared tensors
        la, lb = _train_step(a, x, y), _train_step(b, x, y)
        assert torch.equal(la, lb) or name == "mesu"   # mesu samples noise from the global RNG here
        for (_, ma, sa), (_, mb, sb) in zip(ms.bayesian_pairs(a.model), ms.bayesian_pairs(b.model)):
            if name != "mesu":
                assert torch.equal(ma, mb) and torch.equal(sa, sb)
    with pytest.raises(ValueError, match="rule"):
        make_rule("sgd", _net()).load_state_dict(make_rule("adam", _net()).state_dict())


@pytest.mark.parametrize("name", ["sgd", "adam", "ewc", "si"])
def test_mean_mode_rules_refuse_a_poisoning_step_and_restore_their_state(name):
    """SGD/Adam/EWC/SI update in place through torch optimizers: a non-finite gradient, or a step
    whose result is non-finite, raises NonFiniteStepError and leaves the parameters and the
    optimizer state (momentum, Adam moments) exactly as they were; a good step still runs."""
    import torch
    import mesu_snn as ms
    from mesu_snn.errors import NonFiniteStepError
    from mesu_snn.rules import make_rule
    torch.manual_seed(0)
    net = ms.SpikingMLP([6, 5, 3])
    rule = make_rule(name, net, **({"momentum": 0.9} if name != "adam" else {}))
    x, y = torch.rand(4, 2, 6), torch.tensor([0, 2])
    params = [p for g in rule.optimizer.param_groups for p in g["params"]]

    def backward():
        rule.zero_grad()
        rule.loss(net(x), y).backward()

    def snapshot():
        return ([p.detach().clone() for p in params],
                {i: {k: v.clone() for k, v in rule.optimizer.state[p].items() if torch.is_tensor(v)}
                 for i, p in enumerate(params) if p in rule.optimizer.state})

    def unchanged(snap):
        for p, b in zip(params, snap[0]):
            assert torch.equal(p.detach(), b)
        for i, st in snap[1].items():
            for k, v in st.items():
                assert torch.equal(rule.optimizer.state[params[i]][k], v), (name, k)

    backward()
    rule.step()                                        # a good step: optimizer state now exists
    backward()
    params[0].grad[0, 0] = float("nan")                # a non-finite gradient
    snap = snapshot()
    with pytest.raises(NonFiniteStepError, match="left untouched"):
        rule.step()
    unchanged(snap)
    backward()
    rule.step()                                        # the rule still steps afterwards
    assert any(not torch.equal(p.detach(), b) for p, b in zip(params, snap[0]))
    if name == "adam":                                 # Adam's step is bounded by lr: no overflow
        return
    with torch.no_grad():                              # finite parameters and gradients whose
        for p in params:                               # step overflows: p - lr·g = +inf
            p.fill_(3e38)
    backward()
    for p in params:
        p.grad.fill_(-3e38)
    rule.optimizer.param_groups[0]["lr"] = 1.0
    snap = snapshot()
    with pytest.raises(NonFiniteStepError, match="left as they were"):
        rule.step()
    unchanged(snap)
