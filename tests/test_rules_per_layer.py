"""Per-layer hyperparameters of MESU and BGD (``per_layer``): each layer settles at its own
window's fixed point, the grouped optimizer equals one optimizer per layer on every code path
(the whole step included), state dicts round-trip, configs carry them, and bad input is named."""
import tomllib

import pytest
import torch

import mesu_snn as ms
from mesu_snn.config import ConfigError, dump_toml, parse_config
from mesu_snn.kernels import fast_paths
from mesu_snn.rules.streaming_step import StreamingStep


def _quadratic_run(per_layer, B, steps, N, sp, seed=0):
    """Two pairs under C = Σ_b mean_M ½ h (w − w*_b)²; returns each pair's σ history."""
    g = torch.Generator().manual_seed(seed)
    h = torch.linspace(0.5, 5.0, 30, dtype=torch.float64)
    w_star = [torch.randn(30, dtype=torch.float64, generator=g) for _ in range(2)]
    pairs = [(torch.nn.Parameter(w.clone()), torch.nn.Parameter(torch.full((30,), 0.05, dtype=torch.float64)))
             for w in w_star]
    opt = ms.MESU(pairs, memory=N, sigma_prior=sp, clamp_grad=None, per_layer=per_layer)
    hist = [[], []]
    for _ in range(steps):
        loss = 0.0
        for (mu, sigma), ws in zip(pairs, w_star):
            targets = ws + 0.1 * torch.randn(B, 30, dtype=torch.float64, generator=g)
            w = mu + sigma * torch.randn(64, 1, 30, dtype=torch.float64, generator=g)
            loss = loss + (0.5 * h * (w - targets) ** 2).sum((1, 2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step(batch_size=B)
        for i, (_, sigma) in enumerate(pairs):
            hist[i].append(sigma.detach().clone())
    return h, [torch.stack(x) for x in hist]


@pytest.mark.parametrize("B", [1, 8])
def test_each_layer_settles_at_its_own_windows_fixed_point(B):
    # 1/σ² = N_layer·h + 1/σ_prior² per layer, N in samples for any B
    N, N1, sp = 1600.0, 400.0, 0.1
    steps = int(12 * N / B) + 200
    h, (s0, s1) = _quadratic_run({"pair1": {"memory": N1}}, B, steps, N, sp)
    for hist, n in ((s0, N), (s1, N1)):
        prec = (1 / hist[-steps // 2:] ** 2).mean(0)
        expected = n * h + 1 / sp**2
        rel = (prec - expected).abs() / expected
        assert rel.max() < 0.06, f"N={n}, B={B}: worst synapse off by {rel.max():.3%}"
    # and the two really differ (the short window's precision is about 4x lower)
    assert (1 / s0[-1] ** 2).mean() > 3 * (1 / s1[-1] ** 2).mean()


def _net():
    torch.manual_seed(0)
    return ms.BayesMLP([12, 9, 4], bias=True).double()


def _loss(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 12, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (3,), generator=g)
    return ms.nll_loss(net(x, samples=2, generator=torch.Generator().manual_seed(seed)), y)


@pytest.mark.parametrize("fast,native", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("rule", ["mesu", "bgd"])
def test_grouped_optimizer_equals_one_optimizer_per_layer(rule, fast, native):
    hp0 = dict(memory=500.0, sigma_prior=1.0) if rule == "mesu" else dict(lr=1.0)
    hp1 = dict(memory=50.0, mu_prior=0.1, lr_mu=0.5) if rule == "mesu" else dict(lr=0.25)
    cls = ms.MESU if rule == "mesu" else ms.BGD
    net, ref = _net(), _net()
    opt = cls(net, **hp0, per_layer={"layers.1": hp1})
    assert [g["names"] for g in opt.param_groups] == [["layers.0.weight", "layers.0.bias"],
                                                      ["layers.1.weight", "layers.1.bias"]]
    pairs = [(m, s) for _, m, s in ms.bayesian_pairs(ref)]
    refs = [cls(pairs[:2], **hp0), cls(pairs[2:], **{**hp0, **hp1})]
    with fast_paths(fast, native=native):
        for step in range(4):
            opt.zero_grad()
            _loss(net, step).backward()
            opt.step()
            for o in refs:
                o.zero_grad()
            _loss(ref, step).backward()
            for o in refs:
                o.step()
    for (k, v), w in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-12, atol=1e-14, msg=k)
    assert all(g["step"] == 4 for g in opt.param_groups)


def test_whole_step_with_a_per_layer_window_equals_autograd():
    def make():
        torch.manual_seed(0)
        return ms.SpikingMLP([20, 10, 4], bias=False, estimator="local", readout="membrane", mu_init=2.0).double()
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 1, 20, generator=g) < 0.4).double()
    y = torch.tensor([2])
    out = []
    for fused in (False, True):
        net = make()
        opt = ms.MESU(net, memory=1e3, sigma_prior=1.0, per_layer={"layers.1": {"memory": 30.0}})
        gen = torch.Generator().manual_seed(7)
        st = StreamingStep(net, opt, samples=3) if fused else None
        for _ in range(3):
            if fused:
                st(x, y, gen)
            else:
                opt.zero_grad(set_to_none=True)
                ms.nll_loss(net(x, samples=3, generator=gen), y).backward()
                opt.step(batch_size=1)
        out.append({k: p.detach().clone() for k, p in net.named_parameters()})
    assert out[0]["layers.1.weight_sigma"].ne(make().layers[1].weight_sigma).any()   # the readout's σ did move
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=1e-10, atol=1e-12, msg=k)


def test_state_dict_round_trips_and_another_grouping_is_named():
    net = _net()
    opt = ms.MESU(net, memory=500.0, sigma_prior=1.0, per_layer={"layers.1.*": {"memory": 50.0}})
    _loss(net).backward()
    opt.step()
    sd = opt.state_dict()
    fresh = ms.MESU(_net(), memory=500.0, sigma_prior=1.0, per_layer={"layers.1.*": {"memory": 50.0}})
    fresh.load_state_dict(sd)
    assert [(g["memory"], g.get("layer"), g["step"]) for g in fresh.param_groups] == \
        [(500.0, None, 1), (50.0, "layers.1.*", 1)]
    plain = ms.MESU(_net(), memory=500.0, sigma_prior=1.0)
    with pytest.raises(ValueError, match=r"2 parameter group\(s\) \[bayes: 4 tensors; layers\.1\.\*: 4 tensors\].*"
                                         r"this optimizer 1 \[bayes: 8 tensors\].*per_layer"):
        plain.load_state_dict(sd)
    assert plain.param_groups[0]["memory"] == 500.0 and len(plain.param_groups) == 1


def test_rules_record_it_and_sigma_prior_init_combines_with_it():
    net = ms.SpikingMLP([784, 20, 10], bias=False, init="authors")
    r = ms.make_rule("mesu", net, memory=1.2e6, sigma_prior="init", clamp_grad=None,
                     per_layer={"layers.1": {"memory": 1.5e5}})
    assert r.hyperparameters["per_layer"] == {"layers.1": {"memory": 1.5e5}}
    got = [(g["names"], g["memory"], round(g["sigma_prior"], 6)) for g in r.optimizer.param_groups]
    assert got == [(["layers.0.weight"], 1.2e6, round(2 / 784 ** 0.5, 6)),
                   (["layers.1.weight"], 1.5e5, round(2 / 20 ** 0.5, 6))]
    b = ms.make_rule("bgd", net, lr=1.0, per_layer={"*.weight": {"lr": 0.5}})
    assert [g["lr"] for g in b.optimizer.param_groups] == [0.5]
    assert "per_layer" not in ms.make_rule("mesu", net).hyperparameters      # unchanged records without it


@pytest.mark.parametrize("per_layer,msg", [
    ({"layers.7": {"memory": 10.0}}, r"per_layer\['layers\.7'\] matches no Bayesian layer .*layers\.0\.weight"),
    ({"layers.1": {"memroy": 10.0}}, r"per_layer\['layers\.1'\]: unknown hyperparameter\(s\) memroy"),
    ({"layers.1": {"memory": 0.5}}, r"per_layer\['layers\.1'\]: memory must be a finite number >= 1"),
    ({"layers.1": {"sigma_prior": -1.0}}, r"per_layer\['layers\.1'\]: sigma_prior must be"),
    ({"layers.*": {"memory": 10.0}, "*.weight": {"memory": 20.0}}, r"matched by more than one pattern"),
    ({"layers.1": {}}, r"non-empty mapping"),
    ({"": {"memory": 10.0}}, r"non-empty string"),
    ([("layers.1", {"memory": 10.0})], r"per_layer must be a mapping"),
])
def test_bad_per_layer_input_is_named(per_layer, msg):
    with pytest.raises(ValueError, match=msg):
        ms.MESU(_net(), memory=500.0, sigma_prior=1.0, per_layer=per_layer)
    with pytest.raises(ValueError, match=r"per_layer\['layers\.1'\]: lr must be"):
        ms.BGD(_net(), per_layer={"layers.1": {"lr": -1.0}})
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) memory"):
        ms.BGD(_net(), per_layer={"layers.1": {"memory": 10.0}})


def test_config_tables_validate_round_trip_and_build():
    raw = {"rule": {"name": "mesu", "memory": 1.2e6, "sigma_prior": 1.0,
                    "per_layer": {"layers.1": {"memory": 150000, "clamp_grad": 0}}}}
    cfg = parse_config(raw)
    text = dump_toml(cfg)
    assert 'per_layer = {"layers.1" = {memory = 150000.0, clamp_grad = 0}}' in text   # a quoted, dotted key
    again = parse_config(tomllib.loads(text))
    assert again.rule.params == cfg.rule.params
    from mesu_snn.build import build_rule
    rule = build_rule(again, ms.SpikingMLP([784, 20, 10], bias=False))
    g = rule.optimizer.param_groups
    assert [(x["memory"], x["clamp_grad"]) for x in g] == [(1.2e6, 0.5), (150000.0, None)]   # 0 = no clamp
    for bad, field in [({"layers.1": {"memroy": 1}}, "rule.per_layer.layers.1.memroy"),
                       ({"layers.1": {"memory": -5}}, "rule.per_layer.layers.1.memory"),
                       ({"layers.1": 3}, "rule.per_layer.layers.1"), (7, "rule.per_layer")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            parse_config({"rule": {"name": "mesu", "per_layer": bad}})
    with pytest.raises(ValueError, match=r"config table \[rule\]: per_layer\['layers\.9'\] matches no"):
        build_rule(parse_config({"rule": {"name": "mesu", "per_layer": {"layers.9": {"memory": 10}}}}),
                   ms.SpikingMLP([784, 20, 10], bias=False))


def test_the_online_rule_takes_it_and_its_fixed_point_grid_follows_each_layers_prior():
    def rule(per_layer=None):
        torch.manual_seed(0)
        net = ms.SpikingMLP([20, 10, 4], bias=False)
        return ms.make_rule("mesu_online", net, memory=1e3, sigma_prior=0.1, fixed_point_bits=8,
                            per_layer=per_layer)
    plain, wide = rule(), rule({"layers.1": {"sigma_prior": 0.4, "memory": 50.0}})
    assert [(g["memory"], g["sigma_prior"]) for g in wide.optimizer.param_groups] == [(1e3, 0.1), (50.0, 0.4)]
    assert wide.hyperparameters["per_layer"] == {"layers.1": {"sigma_prior": 0.4, "memory": 50.0}}
    (_, _, _, s0), (_, _, _, s1) = plain._grids
    (_, _, _, w0), (_, _, _, w1) = wide._grids
    from mesu_snn.functional.fixed_point import fixed_point_step
    torch.manual_seed(0)
    top = float(ms.SpikingMLP([20, 10, 4], bias=False).layers[1].weight_sigma.max())   # σ₀, before the grid
    assert top < 0.4 and w0 == s0                           # the σ grid spans the layer's own prior
    assert s1 == fixed_point_step(max(top, 0.1), 8) and w1 == fixed_point_step(0.4, 8)
