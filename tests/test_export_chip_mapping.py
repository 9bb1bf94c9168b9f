"""Chip mapping on a small MESU-trained network (scikit-learn digits): quantisation, pruning by
|μ|/σ, sampled realisations, and their NIR export."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.export import from_nir, to_nir
from mesu_snn.export.evaluate import accuracy
from mesu_snn.export.prune import prune_by_snr, pruning_curve, snr, snr_threshold_for_fraction
from mesu_snn.export.quantize import quantize_model, quantize_tensor
from mesu_snn.export.realisations import realisation_accuracies, sample_realisations


def _encode(v, steps=6):
    return 2.0 * v.unsqueeze(0).expand(steps, *v.shape)


@pytest.fixture(scope="module")
def trained():
    from sklearn.datasets import load_digits
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    net = ms.SpikingMLP([64, 48, 10], beta=0.9)
    opt = ms.MESU(net, memory=20_000, sigma_prior=0.1)
    for _ in range(2):
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 20):
            idx = order[i:i + 20]
            loss = ms.nll_loss(net(_encode(xtr[idx]), samples=2), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net, _encode(xte), yte


def test_quantize_tensor_bounds():
    w = torch.tensor([-1.0, -0.26, 0.0, 0.5, 0.99])
    q, scale = quantize_tensor(w, 8)
    assert q.dtype == torch.int32 and int(q.abs().max()) == 127 and scale == pytest.approx(1 / 127)
    assert float((q * scale - w).abs().max()) <= scale / 2 + 1e-7
    q2, _ = quantize_tensor(w, 2)
    assert set(q2.tolist()) <= {-1, 0, 1}
    assert quantize_tensor(torch.zeros(3), 4)[1] == 1.0
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(w, 1)


def test_quantisation_accuracy_change(trained):
    net, x, y = trained
    base = accuracy(net, x, y)
    assert base > 0.8                                        # the fixture really learned
    q8, rep = quantize_model(net, 8)
    assert set(rep) == {n for n, _, _ in ms.bayesian_pairs(net)}
    for name, mu, _ in ms.bayesian_pairs(q8):
        r = rep[name]
        assert len(torch.unique(mu)) <= 255
        torch.testing.assert_close(mu.double(), r["int"].double() * r["scale"], rtol=0, atol=1e-6)
    assert abs(accuracy(q8, x, y) - base) <= 0.02
    q2, _ = quantize_model(net, 2)
    assert accuracy(q2, x, y) < base                         # 3 levels per layer hurt
    assert torch.equal(net.layers[0].weight_sigma, q8.layers[0].weight_sigma)   # σ untouched


def test_pruning_by_snr(trained):
    net, x, y = trained
    th = snr_threshold_for_fraction(net, 0.3)
    pruned, frac = prune_by_snr(net, th)
    assert frac == pytest.approx(0.3, abs=0.002)
    for (n, mu, s), (_, mu0, s0) in zip(ms.bayesian_pairs(pruned), ms.bayesian_pairs(net)):
        if n.endswith("weight"):
            low = snr(mu0, s0).double() < th
            assert torch.all(mu[low] == 0) and torch.equal(mu[~low], mu0[~low])
        else:
            assert torch.equal(mu, mu0)
    curve = pruning_curve(net, lambda m: accuracy(m, x, y), fractions=(0.0, 0.5, 1.0))
    assert curve[0]["fraction"] == 0.0 and curve[0]["accuracy"] == accuracy(net, x, y)
    assert curve[-1]["fraction"] == 1.0 and curve[-1]["accuracy"] < 0.3
    # low-SNR synapses matter less than random ones: pruning the lowest half beats a random half
    rnd = __import__("copy").deepcopy(net)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, mu, _ in ms.bayesian_pairs(rnd):
            if n.endswith("weight"):
                mu[torch.rand(mu.shape, generator=g) < 0.5] = 0.0
    assert curve[1]["accuracy"] > accuracy(rnd, x, y)


def test_realisations_are_seeded_draws(trained):
    net, x, y = trained
    a, b = sample_realisations(net, 3, seed=4), sample_realisations(net, 3, seed=4)
    assert all(torch.equal(p.layers[0].weight_mu, q.layers[0].weight_mu) for p, q in zip(a, b))
    assert not torch.equal(a[0].layers[0].weight_mu, a[1].layers[0].weight_mu)
    d = ((a[0].layers[0].weight_mu - net.layers[0].weight_mu) / net.layers[0].weight_sigma).detach()
    assert abs(float(d.mean())) < 0.1 and abs(float(d.std()) - 1) < 0.1   # ε ~ N(0, 1)
    accs = realisation_accuracies(net, 3, lambda m: accuracy(m, x, y), seed=4)
    assert len(accs) == 3 and all(0.5 < v <= 1 for v in accs)


def test_quantised_pruned_export(trained, tmp_path):
    net, x, y = trained
    q, rep = quantize_model(prune_by_snr(net, 1.0)[0], 8)
    meta = {n.rsplit(".", 1)[0]: {"quant_bits": 8, "weight_int": r["int"].numpy(), "weight_scale": r["scale"]}
            for n, r in rep.items() if n.endswith("weight")}
    path = to_nir(q, tmp_path / "q.nir", layer_metadata=meta)
    g = nir.read(path, type_check=True)
    aff = [n for n in g.nodes.values() if isinstance(n, nir.Affine)]
    assert len(aff) == 2
    for node in aff:
        np.testing.assert_allclose(node.weight, node.metadata["weight_int"] * node.metadata["weight_scale"], atol=1e-6)
    back = from_nir(path)
    assert accuracy(back, x, y) == accuracy(q, x, y)
