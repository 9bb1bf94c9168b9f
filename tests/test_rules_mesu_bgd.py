"""MESU and BGD: the closed-form equations, the diagonal-Newton fixed point, vanishing
plasticity of BGD, the gradient clamp, the optimizers' bookkeeping and bad input."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import mesu_snn as ms
from mesu_snn.functional import bgd_update, mesu_update

torch.set_default_dtype(torch.float32)


def _rand(seed, n=50):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, dtype=torch.float64, generator=g) * 0.3
    sigma = torch.rand(n, dtype=torch.float64, generator=g) * 0.09 + 0.01
    gm = torch.randn(n, dtype=torch.float64, generator=g)
    gs = torch.randn(n, dtype=torch.float64, generator=g)
    return mu, sigma, gm, gs


def _pair_from(mu, sigma, gm, gs):
    m, s = torch.nn.Parameter(mu.clone()), torch.nn.Parameter(sigma.clone())
    m.grad, s.grad = gm.clone(), gs.clone()
    return m, s


@pytest.mark.parametrize("hp", [dict(memory=300_000, sigma_prior=0.1, mu_prior=0.0, lr_mu=1.0, lr_sigma=1.0),
                                dict(memory=50.0, sigma_prior=0.03, mu_prior=0.2, lr_mu=0.3, lr_sigma=2.5),
                                dict(memory=7.0, sigma_prior=0.5, mu_prior=-0.1, lr_mu=4.0, lr_sigma=0.1)])
def test_mesu_step_equals_closed_form(hp):
    mu, sigma, gm, gs = _rand(1)
    m, s = _pair_from(mu, sigma, gm, gs)
    opt = ms.MESU([(m, s)], clamp_grad=None, **hp)
    opt.step()
    N, sp, mp = hp["memory"], hp["sigma_prior"], hp["mu_prior"]
    exp_mu = mu - hp["lr_mu"] * sigma**2 * gm + sigma**2 * (mp - mu) / (N * sp**2)
    exp_sigma = sigma - hp["lr_sigma"] * sigma**2 / 2 * gs + sigma * (sp**2 - sigma**2) / (2 * N * sp**2)
    torch.testing.assert_close(m.data, exp_mu, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.data, exp_sigma, rtol=1e-12, atol=1e-15)
    assert not torch.equal(m.data, mu)


def test_mesu_clamp_clips_each_gradient_to_c_over_sigma():
    mu, sigma, gm, gs = _rand(2)
    gm, gs = gm * 1e3, gs * 1e3
    c = 0.5
    new_mu, new_sigma = mesu_update(mu, sigma, gm, gs, memory=1e4, sigma_prior=0.1, clamp_grad=c)
    cgm = torch.maximum(torch.minimum(gm, c / sigma), -c / sigma)
    cgs = torch.maximum(torch.minimum(gs, c / sigma), -c / sigma)
    exp_mu, exp_sigma = mesu_update(mu, sigma, cgm, cgs, memory=1e4, sigma_prior=0.1, clamp_grad=None)
    torch.testing.assert_close(new_mu, exp_mu, rtol=1e-12, atol=0)
    torch.testing.assert_close(new_sigma, exp_sigma, rtol=1e-12, atol=0)
    assert (cgm != gm).any()                        # the clamp was active


@pytest.mark.parametrize("lr", [1.0, 0.37])
def test_bgd_step_equals_closed_form(lr):
    mu, sigma, gm, gs = _rand(3)
    m, s = _pair_from(mu, sigma, gm, gs)
    ms.BGD([(m, s)], lr=lr).step()
    exp_mu = mu - lr * sigma**2 * gm
    exp_sigma = sigma * torch.sqrt(1 + (sigma * gs / 2) ** 2) - sigma**2 * gs / 2
    torch.testing.assert_close(m.data, exp_mu, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.data, exp_sigma, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(bgd_update(mu, sigma, gm, gs, lr=lr)[1], exp_sigma)


def _quadratic_run(rule, h, steps, samples=32, seed=0, **hp):
    """Loss C = mean over MC samples of ½ h (w − w*)², w = μ + σε, one synapse per entry of h."""
    g = torch.Generator().manual_seed(seed)
    n = h.numel()
    w_star = torch.randn(n, dtype=torch.float64, generator=g)
    mu = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    sigma = torch.nn.Parameter(torch.full((n,), 0.1, dtype=torch.float64))
    opt = rule([(mu, sigma)], **hp)
    history = []
    for t in range(steps):
        eps = torch.randn(samples, n, dtype=torch.float64, generator=g)
        w = mu + sigma * eps
        loss = (0.5 * h * (w - w_star) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(sigma.detach().clone())
    return torch.stack(history), mu.detach(), w_star


def test_mesu_sigma_settles_at_diagonal_newton_fixed_point():
    # σ relaxes to its fixed point with a time constant of about N updates
    h = torch.linspace(0.5, 5.0, 40, dtype=torch.float64)
    N, sp = 200.0, 0.1
    hist, mu, w_star = _quadratic_run(ms.MESU, h, steps=3000, memory=N, sigma_prior=sp)
    sigma = hist[-1500:].mean(0)
    expected = N * h + 1 / sp**2
    rel = (1 / sigma**2 - expected).abs() / expected
    assert rel.max() < 0.05, f"worst synapse off by {rel.max():.3%}"
    # the μ step is a damped Newton step: μ reaches the minimum (shrunk slightly by the prior)
    shrink = (N * h) / (N * h + 1 / sp**2)
    torch.testing.assert_close(mu, w_star * shrink, atol=0.05, rtol=0)


def test_bgd_loses_plasticity_while_mesu_stays_put():
    h = torch.linspace(0.5, 5.0, 40, dtype=torch.float64)
    N, sp = 200.0, 0.1
    bgd_hist, _, _ = _quadratic_run(ms.BGD, h, steps=4000)
    mesu_hist, _, _ = _quadratic_run(ms.MESU, h, steps=4000, memory=N, sigma_prior=sp)
    prec = lambda hist, t: (1 / hist[t - 200:t] ** 2).mean()
    # BGD: 1/σ² keeps growing (≈ linearly in the number of updates)
    assert prec(bgd_hist, 4000) > 1.6 * prec(bgd_hist, 2000) > 1.6 ** 2 * prec(bgd_hist, 1000)
    # MESU: settled, changes by < 5% between 2000 and 4000 updates
    assert abs(prec(mesu_hist, 4000) / prec(mesu_hist, 2000) - 1) < 0.05
    assert prec(bgd_hist, 4000) > 5 * prec(mesu_hist, 4000)


finite = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(mu=st.floats(-10, 10), sigma=st.floats(1e-6, 0.1), gm=finite, gs=finite,
       memory=st.floats(1.0, 1e7), lr_sigma=st.floats(0.0, 3.9))
def test_clamped_mesu_keeps_sigma_positive_and_finite(mu, sigma, gm, gs, memory, lr_sigma):
    t = lambda v: torch.tensor([v], dtype=torch.float64)
    new_mu, new_sigma = mesu_update(t(mu), t(sigma), t(gm), t(gs), memory=memory, sigma_prior=0.1,
                                    lr_sigma=lr_sigma)     # default clamp_grad 0.5: lr_sigma·c < 2
    assert torch.isfinite(new_mu).all() and torch.isfinite(new_sigma).all()
    assert (new_sigma > 0).all()


def test_unclamped_mesu_drives_sigma_negative_on_the_same_case():
    mu, sigma, gm, gs = (torch.tensor([v], dtype=torch.float64) for v in (0.0, 0.05, 0.0, 1e3))
    _, unclamped = mesu_update(mu, sigma, gm, gs, memory=1e4, sigma_prior=0.1, clamp_grad=None)
    _, clamped = mesu_update(mu, sigma, gm, gs, memory=1e4, sigma_prior=0.1)
    assert unclamped.item() < 0 < clamped.item()


def _tiny_model():
    torch.manual_seed(0)
    return ms.SpikingMLP([6, 5, 3])


def _loss(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 8, 6, generator=g) < 0.5).float()
    y = torch.randint(0, 3, (8,), generator=g)
    return ms.nll_loss(net(x, samples=3, generator=g), y)


def test_pairs_found_by_structure_and_state_dict_round_trip():
    net = _tiny_model()
    opt = ms.MESU(net, memory=100, sigma_prior=0.1)
    names = [n for n, _, _ in opt.pairs()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    for _, mu, s in opt.pairs():
        assert mu.shape == s.shape
    for _ in range(2):
        opt.zero_grad(); _loss(net).backward(); opt.step()
    net2 = _tiny_model()
    net2.load_state_dict(net.state_dict())
    opt2 = ms.MESU(net2, memory=1.0, sigma_prior=1.0)            # hyperparameters come from the state dict
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["memory"] == 100 and opt2.param_groups[0]["step"] == 2
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad(); _loss(n, seed=5).backward(); o.step()
    for (_, a, b), (_, c, d) in zip(opt.pairs(), opt2.pairs()):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_non_bayesian_parameters_are_refused_or_trained_by_sgd():
    net = torch.nn.Sequential(ms.BayesLinear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"non-Bayesian trainable parameters \['1.weight', '1.bias'\]"):
        ms.MESU(net)
    opt = ms.MESU(net, other_lr=0.1)
    w0 = net[1].weight.detach().clone()
    with ms.sampled_weights(net, samples=1):           # one draw, batch folded as (1·B, ...)
        net(torch.randn(4, 3)).sum().backward()
    g = net[1].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(net[1].weight.detach(), w0 - 0.1 * g)
    with pytest.raises(ValueError, match="flat parameter list"):
        ms.MESU(list(net.parameters()))
    with pytest.raises(ValueError, match="no Bayesian layers"):
        ms.BGD(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("rule", [ms.MESU, ms.BGD])
def test_nonfinite_gradient_leaves_model_untouched(rule):
    net = _tiny_model()
    opt = rule(net)
    _loss(net).backward()
    net.layers[1].weight_sigma.grad[0, 0] = float("nan")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"layers.1.weight_sigma"):
        opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    skip = rule(net, on_nonfinite="skip")
    net.layers[0].weight_mu.grad[0, 0] = float("inf")
    skip.step()
    skip.step()
    assert skip.skipped_steps == 2
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert skip.state_dict()["skipped_steps"] == 2


def test_construction_errors():
    net = _tiny_model()
    for kw, msg in [(dict(memory=0), "memory"), (dict(memory=-5), "memory"), (dict(sigma_prior=0), "sigma_prior"),
                    (dict(sigma_prior=-1.0), "sigma_prior"), (dict(clamp_grad=0), "clamp_grad"),
                    (dict(lr_mu=-1), "lr_mu"), (dict(on_nonfinite="ignore"), "on_nonfinite")]:
        with pytest.raises(ValueError, match=msg):
            ms.MESU(net, **kw)
    with pytest.raises(ValueError, match="lr"):
        ms.BGD(net, lr=-1)
    bad = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="σ must be > 0"):
        ms.MESU([(torch.nn.Parameter(torch.zeros(3)), bad)])
    with pytest.raises(ValueError, match="sigma_init"):
        ms.BayesLinear(3, 2, sigma_init=0.0)
    with pytest.raises(ValueError, match="sigma_init"):
        ms.SpikingMLP([3, 2], sigma_init=-1)


# -- memory in samples for any batch size ------------------------------------------------

def _batched_quadratic_run(B, h, steps, N, sp, samples=64, seed=0, via="step"):
    """C = Σ_b mean_M ½ h (w − w*_b)²: B samples per update, each of curvature h (its own target)."""
    g = torch.Generator().manual_seed(seed)
    n = h.numel()
    w_star = torch.randn(n, dtype=torch.float64, generator=g)
    mu = torch.nn.Parameter(w_star.clone())       # start at the minimum: only σ's dynamics are tested
    sigma = torch.nn.Parameter(torch.full((n,), 0.05, dtype=torch.float64))   # σ²·B·h < 2 at the start
    opt = ms.MESU([(mu, sigma)], memory=N, sigma_prior=sp, clamp_grad=None,
                  batch_size=B if via == "constructor" else 1)
    hist = []
    for _ in range(steps):
        targets = w_star + 0.1 * torch.randn(B, n, dtype=torch.float64, generator=g)
        eps = torch.randn(samples, 1, n, dtype=torch.float64, generator=g)
        w = mu + sigma * eps                                                  # (M, 1, n), shared by the batch
        loss = (0.5 * h * (w - targets) ** 2).sum((1, 2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step(batch_size=B) if via == "step" else opt.step()
        hist.append(sigma.detach().clone())
    return torch.stack(hist)


@pytest.mark.parametrize("B,via", [(1, "step"), (8, "step"), (32, "step"), (8, "constructor")])
def test_mesu_fixed_point_is_N_samples_for_any_batch_size(B, via):
    # N in samples: 1/σ² = N·h + 1/σ_prior² whatever B (σ relaxes within about N/B updates)
    h = torch.linspace(0.5, 5.0, 40, dtype=torch.float64)
    N, sp = 1600.0, 0.1
    steps = int(12 * N / B) + 200
    hist = _batched_quadratic_run(B, h, steps, N, sp, via=via)
    prec = (1 / hist[-steps // 2:] ** 2).mean(0)
    expected = N * h + 1 / sp**2
    rel = (prec - expected).abs() / expected
    assert rel.max() < 0.06, f"B={B}: worst synapse off by {rel.max():.3%}"


def test_mesu_without_batch_size_at_B_gt_1_has_a_window_of_N_times_B_samples():
    # the old meaning (N in updates) is what one gets by not telling the rule B: a B-fold window
    h = torch.linspace(0.5, 5.0, 40, dtype=torch.float64)
    N, sp, B = 200.0, 0.1, 8
    g = torch.Generator().manual_seed(0)
    mu = torch.nn.Parameter(torch.zeros(40, dtype=torch.float64))
    sigma = torch.nn.Parameter(torch.full((40,), 0.05, dtype=torch.float64))
    opt = ms.MESU([(mu, sigma)], memory=N, sigma_prior=sp, clamp_grad=None)     # batch_size defaults to 1
    for _ in range(2500):
        eps = torch.randn(16, 1, 40, dtype=torch.float64, generator=g)
        loss = (0.5 * h * (mu + sigma * eps) ** 2).sum(-1).mean() * B
        opt.zero_grad(); loss.backward(); opt.step()
    prec = 1 / sigma.detach() ** 2
    rel = (prec - (N * B * h + 1 / sp**2)).abs() / (N * B * h + 1 / sp**2)
    assert rel.max() < 0.1


def test_mesu_update_batch_size_scales_only_the_prior_terms():
    mu, sigma, gm, gs = _rand(7)
    N, sp, mp, B = 1000.0, 0.2, 0.1, 16
    new_mu, new_sigma = mesu_update(mu, sigma, gm, gs, memory=N, sigma_prior=sp, mu_prior=mp, clamp_grad=None,
                                    batch_size=B)
    exp_mu = mu - sigma**2 * gm + B * sigma**2 * (mp - mu) / (N * sp**2)
    exp_sigma = sigma - sigma**2 / 2 * gs + B * sigma * (sp**2 - sigma**2) / (2 * N * sp**2)
    torch.testing.assert_close(new_mu, exp_mu, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(new_sigma, exp_sigma, rtol=1e-12, atol=1e-15)
    # same as the B = 1 rule with memory N/B (the authors' "number of batches")
    ref = mesu_update(mu, sigma, gm, gs, memory=N / B, sigma_prior=sp, mu_prior=mp, clamp_grad=None)
    torch.testing.assert_close(new_sigma, ref[1], rtol=1e-12, atol=1e-15)
    # the fused (foreach) path of the optimizer agrees
    m, s = _pair_from(mu, sigma, gm, gs)
    ms.MESU([(m, s)], memory=N, sigma_prior=sp, mu_prior=mp, clamp_grad=None).step(batch_size=B)
    torch.testing.assert_close(m.data, exp_mu, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(s.data, exp_sigma, rtol=1e-10, atol=1e-14)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            mesu_update(mu, sigma, gm, gs, memory=N, sigma_prior=sp, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size"):
            ms.MESU([(torch.nn.Parameter(mu.clone()), torch.nn.Parameter(sigma.clone()))], batch_size=bad)


def test_mesu_rule_passes_the_batch_size_of_each_loss():
    from mesu_snn.rules import make_rule
    net = _tiny_model()
    rule = make_rule("mesu", net, memory=500.0, sigma_prior=0.1, clamp_grad=None)
    ref = _tiny_model()
    opt = ms.MESU(ref, memory=500.0, sigma_prior=0.1, clamp_grad=None)
    g = torch.Generator().manual_seed(3)
    for B in (8, 3):     # a short last batch too
        x = (torch.rand(4, B, 6, generator=g) < 0.5).float()
        y = torch.randint(0, 3, (B,), generator=g)
        gen_state = torch.Generator().manual_seed(11)
        loss = rule.loss(net(x, samples=2, generator=gen_state), y)
        rule.zero_grad(); loss.backward(); rule.step()
        gen_state = torch.Generator().manual_seed(11)
        loss = ms.nll_loss(ref(x, samples=2, generator=gen_state), y)
        opt.zero_grad(); loss.backward(); opt.step(batch_size=B)
    for (_, a, b), (_, c, d) in zip(rule.optimizer.pairs(), opt.pairs()):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, d, rtol=0, atol=0)


def test_legacy_mesu_state_dict_is_refused_and_converted_on_request():
    from mesu_snn.rules.mesu import upgrade_legacy_state_dict
    net = _tiny_model()
    opt = ms.MESU(net, memory=1e5, sigma_prior=0.1)
    sd = opt.state_dict()
    legacy = {**sd, "param_groups": [{k: v for k, v in g.items() if k not in ("memory_unit", "batch_size")}
                                     for g in sd["param_groups"]]}
    opt2 = ms.MESU(_tiny_model(), memory=10.0)
    with pytest.raises(ValueError, match="memory counted updates.*upgrade_legacy_state_dict"):
        opt2.load_state_dict(legacy)
    opt2.load_state_dict(upgrade_legacy_state_dict(legacy, batch_size=16))
    g = opt2.param_groups[0]
    assert g["memory"] == 1.6e6 and g["batch_size"] == 16 and g["memory_unit"] == "samples"


def test_bgd_rule_sums_the_loss_over_the_batch_as_zeno_et_al():
    from mesu_snn.rules import make_rule
    rule = make_rule("bgd", _tiny_model())
    out = torch.randn(3, 8, 3)
    y = torch.randint(0, 3, (8,))
    assert rule.reduction == "sum"
    torch.testing.assert_close(rule.data_loss(out, y), ms.nll_loss(out, y))


# -- absurd hyperparameters: refused at construction, or the step refused before it writes ----

@pytest.mark.parametrize("kw, msg", [
    (dict(memory=1e-9), "memory must be a finite number >= 1.*overshoots"),
    (dict(sigma_prior=1e-30), "sigma_prior=1e-30 is too small.*σ <= 0"),
    (dict(lr_sigma=1e6), "lr_sigma·clamp_grad must be < 2"),
    (dict(sigma_prior=float("inf")), "sigma_prior must be a finite number > 0"),
    (dict(lr_mu=float("nan")), "lr_mu must be a finite number >= 0"),
    (dict(lr_mu=float("inf")), "lr_mu must be a finite number >= 0"),
    (dict(mu_prior=float("nan")), "mu_prior must be a finite number"),
    (dict(memory=float("inf")), "memory must be a finite number"),
    (dict(clamp_grad=float("nan")), "clamp_grad")])
def test_mesu_refuses_absurd_hyperparameters_at_construction(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ms.MESU(_tiny_model(), **kw)
    from mesu_snn.rules import make_rule
    with pytest.raises(ValueError, match=msg.split("=")[0].split(" ")[0]):
        make_rule("mesu", _tiny_model(), **kw)


def test_every_rule_refuses_non_finite_hyperparameters():
    from mesu_snn.rules import RULES, hyperparameters, make_rule
    for name in RULES:
        for hp, (default, bound) in hyperparameters(name).items():
            if isinstance(bound, tuple):
                continue
            for bad in (float("nan"), float("inf"), -float("inf")):
                with pytest.raises(ValueError, match=hp):
                    make_rule(name, _tiny_model(), **{hp: bad})
    with pytest.raises(ValueError, match="lr"):
        ms.BGD(_tiny_model(), lr=float("inf"))


def _assert_state(net, before):
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_step_that_would_poison_the_model_is_refused_before_anything_changes():
    # lr_sigma = 1e6 without a clamp is not refused at construction (no bound on the gradients):
    # the step computes new σ <= 0 and is refused whole; nothing is half-written
    net = _tiny_model()
    opt = ms.MESU(net, lr_sigma=1e6, clamp_grad=None)
    _loss(net).backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"would make layers\.\d\.(weight|bias)_sigma (<= 0|non-finite)"
                                                 r".*μ and σ left untouched"):
        opt.step()
    _assert_state(net, before)
    assert opt.param_groups[0]["step"] == 0
    from mesu_snn.errors import MesuError, NonFiniteStepError
    with pytest.raises(NonFiniteStepError) as e:
        opt.step()
    assert isinstance(e.value, MesuError)
    skip = ms.MESU(net, lr_sigma=1e6, clamp_grad=None, on_nonfinite="skip")
    for _ in range(3):
        skip.step()
    assert skip.skipped_steps == 3
    _assert_state(net, before)
    # BGD with a huge lr and gradients: μ overflows to inf, σ rounds to 0 -> refused
    for p in net.parameters():
        p.grad.mul_(1e30)
    bgd = ms.BGD(net, lr=1e10)
    with pytest.raises(FloatingPointError, match=r"would make layers\.\d\.(weight|bias)_(mu|sigma) (non-finite|<= 0)"):
        bgd.step()
    _assert_state(net, before)


@pytest.mark.parametrize("fast,native", [(True, False), (True, True), (False, False)])
def test_checked_step_equals_unchecked_update_bit_for_bit(fast, native):
    """The checked step writes what the unchecked fused update writes: bit for bit on the torch
    fast path, to rounding on the compiled loops (another operation order) and the reference."""
    from mesu_snn.kernels import fast_paths
    from mesu_snn.kernels.fused_update import fused_mesu_step, fused_bgd_step
    for rule in ("mesu", "bgd"):
        net, ref = _tiny_model(), _tiny_model()
        opt = ms.MESU(net, memory=50.0) if rule == "mesu" else ms.BGD(net, lr=0.5)
        _loss(net).backward()
        with fast_paths(fast, native=native):
            opt.step()
        _loss(ref).backward()
        pairs = [(m, s) for _, m, s in ms.synapses.bayesian_pairs(ref)]
        args = ([m for m, _ in pairs], [s for _, s in pairs], [m.grad for m, _ in pairs], [s.grad for _, s in pairs])
        with torch.no_grad():
            fused_mesu_step(*args, memory=50.0, sigma_prior=0.1) if rule == "mesu" else fused_bgd_step(*args, lr=0.5)
        for (k, v), w in zip(net.state_dict().items(), ref.state_dict().values()):
            if fast and not native:
                assert torch.equal(v, w), k
            else:
                torch.testing.assert_close(v, w)


def test_guarded_update_also_refuses_a_poisoning_step():
    from mesu_snn.rules import guarded_update
    net = _tiny_model()
    opt = ms.MESU(net, lr_sigma=1e6, clamp_grad=None)
    _loss(net).backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert not bool(guarded_update(opt))
    _assert_state(net, before)


def test_loaded_optimizer_state_with_a_bad_hyperparameter_is_refused():
    net = _tiny_model()
    sd = ms.MESU(net).state_dict()
    sd["param_groups"][0]["lr_mu"] = float("nan")
    opt = ms.MESU(net)
    with pytest.raises(ValueError, match="invalid hyperparameter.*lr_mu"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr_mu"] == 1.0


def test_lif_and_layers_refuse_non_finite_numbers():
    for kw, msg in [(dict(beta=float("nan")), "beta"), (dict(beta=1.5), "beta"), (dict(threshold=float("inf")), "threshold"),
                    (dict(threshold=0.0), "threshold"), (dict(v_leak=float("nan")), "v_leak"),
                    (dict(input_scale=float("inf")), "input_scale"), (dict(beta=torch.tensor([0.5, float("nan")])), "beta")]:
        with pytest.raises(ValueError, match=msg):
            ms.LIF(**kw)
    for kw, msg in [(dict(sigma_init=float("inf")), "sigma_init"), (dict(sigma_init=float("nan")), "sigma_init"),
                    (dict(mu_init=float("inf")), "mu_init")]:
        with pytest.raises(ValueError, match=msg):
            ms.BayesLinear(3, 2, **kw)
    ms.LIF(beta=torch.tensor([0.0, 1.0]), threshold=0.5)      # the bounds themselves are fine


def test_the_cached_compiled_step_sees_new_or_changed_gradients():
    """The compiled MESU step keeps its checked pointer arrays for the very same tensors; a new gradient
    tensor, or a NaN written into the kept one, is still checked (and the step refused)."""
    from mesu_snn.errors import NonFiniteStepError
    from mesu_snn.kernels import native
    if not native.available():
        pytest.skip("no compiled loops here")
    torch.manual_seed(0)
    layer = ms.BayesLinear(6, 4)
    opt = ms.MESU(layer, memory=1e3, sigma_prior=1.0)
    ref = ms.MESU([(layer.weight_mu.detach().clone(), layer.weight_sigma.detach().clone()),
                   (layer.bias_mu.detach().clone(), layer.bias_sigma.detach().clone())], memory=1e3, sigma_prior=1.0)
    for p, q in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        p.grad = torch.randn_like(p) * 0.1
        q.grad = p.grad.clone()
    for _ in range(3):                                   # the second and third steps hit the cache
        opt.step()
        ref._native_cache = None
        ref.step()
    assert opt._native_cache is not None
    for p, q in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        assert torch.equal(p, q)
    before = [p.detach().clone() for p in layer.parameters()]
    layer.weight_mu.grad[0, 0] = float("nan")            # in place: the kept tensor, checked again
    with pytest.raises(NonFiniteStepError):
        opt.step()
    layer.weight_mu.grad = torch.full_like(layer.weight_mu, float("inf"))   # a new tensor
    with pytest.raises(NonFiniteStepError):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), before))
