"""BayesMLP (the non-spiking mode): shapes, the authors' initialisation, every rule, the config
path (model.kind = "ann", standardized inputs) and the evaluation conventions."""
import math

import pytest
import torch

import mesu_snn as ms
from mesu_snn.kernels.noise import standard_normal
from mesu_snn.build import build_model, build_pipeline, build_rule, build_tasks
from mesu_snn.config import ConfigError, parse_config
from mesu_snn.encoders import standardization_stats, standardize
from mesu_snn.metrics import accuracy
from mesu_snn.rules import make_rule


def test_bayes_mlp_shapes_and_modes():
    torch.manual_seed(0)
    net = ms.BayesMLP([12, 7, 3])
    x = torch.randn(5, 12)
    assert net(x, samples=4).shape == (4, 5, 3)
    assert net(x).shape == (1, 5, 3)
    a, b = net(x, samples=2), net(x, samples=2)
    assert not torch.equal(a, b)                       # sample mode: fresh draws
    net.mean_mode()
    assert net(x, samples=4).shape == (1, 5, 3)
    torch.testing.assert_close(net(x), net(x))
    mu0, mu1 = net.layers[0].weight_mu, net.layers[1].weight_mu
    torch.testing.assert_close(net(x)[0], torch.relu(x @ mu0.t()) @ mu1.t())
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        net(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="activation"):
        ms.BayesMLP([3, 2], activation="gelu")
    with pytest.raises(ValueError, match="init"):
        ms.BayesMLP([3, 2], init="xavier")


def test_bayes_mlp_sample_mode_equals_explicit_weight_draws():
    torch.manual_seed(1)
    net = ms.BayesMLP([6, 4, 2], activation="tanh")
    x = torch.randn(3, 6)
    g = torch.Generator().manual_seed(5)
    out = net(x, samples=2, generator=g)
    g = torch.Generator().manual_seed(5)
    l0, l1 = net.layers
    e0 = standard_normal((2, 4, 6), generator=g, dtype=torch.float32, device="cpu")   # the layers' noise source
    e1 = standard_normal((2, 2, 4), generator=g, dtype=torch.float32, device="cpu")
    w0, w1 = l0.weight_mu + l0.weight_sigma * e0, l1.weight_mu + l1.weight_sigma * e1
    ref = torch.stack([torch.tanh(x @ w0[m].t()) @ w1[m].t() for m in range(2)])
    torch.testing.assert_close(out, ref)


def test_authors_init_numbers_and_no_bias():
    # kellian-cottart/mesu-pmnist customLayers/linears/bayesianLinear.py: lim = 4/sqrt(in), sigma = 0.5*lim
    torch.manual_seed(0)
    net = ms.BayesMLP([784, 50, 10])                   # default init="authors", bias=False
    for layer, fan_in in zip(net.layers, (784, 50)):
        assert layer.bias_mu is None
        torch.testing.assert_close(layer.weight_sigma.detach(), torch.full_like(layer.weight_sigma, 2 / math.sqrt(fan_in)))
        mu = layer.weight_mu.detach()
        assert mu.abs().max() <= 4 / math.sqrt(fan_in) and mu.abs().max() > 3.9 / math.sqrt(fan_in)
    assert ms.INITS["authors"] == (4.0, 2.0)
    snn = ms.SpikingMLP([784, 50, 10], init="authors")
    assert float(snn.layers[0].weight_sigma[0, 0].detach()) == pytest.approx(2 / 28)
    lib = ms.SpikingMLP([784, 50, 10])                 # spiking default: the library's (1, 0.5)
    assert float(lib.layers[0].weight_sigma[0, 0].detach()) == pytest.approx(0.5 / 28)


@pytest.mark.parametrize("rule,hp", [("mesu", dict(memory=1000.0, sigma_prior=1.0)),
                                     ("bgd", {}), ("sgd", dict(lr=0.1)), ("adam", dict(lr=1e-2)),
                                     ("ewc", dict(lr=0.1)), ("si", dict(lr=0.1))])
def test_bayes_mlp_trains_with_every_rule(rule, hp):
    torch.manual_seed(0)
    # batch 16 on the summed loss: the library init (σ₀² = 0.25/fan_in); the authors' σ₀ is for batch 1
    net = ms.BayesMLP([8, 6, 3], init="library")
    r = make_rule(rule, net, **hp)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    for _ in range(30):
        loss = r.loss(net(x, samples=4 if r.bayesian else 1), y)
        r.zero_grad(); loss.backward(); r.step()
        losses.append(float(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert losses[-1] < losses[0]
    if rule in ("ewc", "si"):
        r.end_task(0, lambda: iter([(x, y)]))


def test_standardize_uses_training_stats():
    x = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    mean, std = standardization_stats(x)
    z = standardize(x, mean, std)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4 and z.min() < 0
    with pytest.raises(ValueError, match="std"):
        standardize(x, mean, 0.0)


def _ann_cfg(clamp=0, **rule):
    return parse_config({
        "data": {"dataset": "digits"},
        "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 1},
        "encoder": {"kind": "standardized"},
        "model": {"kind": "ann", "hidden": [20], "init": "authors"},
        "rule": {"name": "mesu", "memory": 3000.0, "sigma_prior": 1.0, "clamp_grad": clamp, **rule},
        "schedule": {"train_samples": 2, "eval_samples": 4, "eval_average": "log_probs", "ood": False},
    })


def test_config_ann_kind_builds_bayes_mlp_with_standardized_inputs():
    cfg = _ann_cfg()
    tasks = build_tasks(cfg)
    net = build_model(cfg, tasks)
    assert isinstance(net, ms.BayesMLP) and net.layers[0].bias_mu is None
    pipe = build_pipeline(cfg, tasks)
    x = pipe(tasks[0].train_x[:32])
    assert x.shape == (32, 64) and x.min() < 0
    assert abs(float(pipe(tasks[0].train_x[:]).mean())) < 1e-4
    rule = build_rule(cfg, net)
    assert rule.optimizer.param_groups[0]["clamp_grad"] is None      # config 0: no clamp
    with pytest.raises(ConfigError, match="encoder.kind"):
        parse_config({**cfg.to_dict(), "encoder": {"kind": "rate", "gain": 1.0}})
    with pytest.raises(ConfigError, match="model.init"):
        parse_config({**cfg.to_dict(), "model": {"kind": "ann", "init": "xavier"}})


def test_trainer_runs_the_ann_with_the_authors_evaluation():
    from mesu_snn.build import build_trainer
    cfg = _ann_cfg(clamp=0.5)      # 8x8 digits at σ₀ = 2/8 without the clamp: NaN within the first task
    cfg.data.train_per_task = 60
    cfg.data.test_per_task = 40
    tr = build_trainer(cfg)
    assert tr.evaluator.average == "log_probs"
    res = tr.fit()
    assert len(res["accuracy_matrix"]) == 2 and res["accuracy_matrix"][1][1] is not None


def test_accuracy_average_conventions_differ_where_they_should():
    # two samples: p = (0.8, 0.2, ~0) and (~0, 0.3, 0.7). Mean p: class 0 (0.4); mean log p: class 1,
    # the only class no sample rules out
    out = torch.tensor([[[0.8, 0.2, 1e-4]], [[1e-4, 0.3, 0.7]]]).log()
    y = torch.tensor([0])
    assert accuracy(out, y, average="probs") == 1.0        # mean softmax: class 0
    assert accuracy(out, y, average="log_probs") == 0.0    # mean log-softmax: class 1
    with pytest.raises(ValueError, match="average"):
        accuracy(out, y, average="median")
