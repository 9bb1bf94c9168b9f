"""A Bayesian spiking MLP trained with MESU on real data (scikit-learn's digits) reaches >= 90%.
(Timings live in benchmarks/, never in tests: the machines are shared.)"""

import torch

import mesu_snn as ms


def test_mesu_trains_a_bayesian_spiking_mlp_on_digits_to_90_percent():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_train = 1347                                              # 75 % train, 450 held-out test digits
    encode = lambda v: 2.0 * v.unsqueeze(0).expand(10, *v.shape)  # constant current, T = 10
    net = ms.SpikingMLP([64, 128, 10], beta=0.9)
    opt = ms.MESU(net, memory=100_000, sigma_prior=0.1)
    g = torch.Generator().manual_seed(1)
    for epoch in range(5):
        order = torch.randperm(n_train, generator=g)
        for i in range(0, n_train, 16):
            idx = order[i:i + 16]
            loss = ms.nll_loss(net(encode(x[idx]), samples=4, generator=g), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = ms.predictive_log_probs(net(encode(x[n_train:]), samples=8)).argmax(1)
    acc = (pred == y[n_train:]).float().mean().item()
    assert acc >= 0.90, f"test accuracy {acc:.3f}"
    # MESU made σ informative: σ shrank on the synapses that matter, stayed positive everywhere
    sig = net.layers[0].weight_sigma.detach()
    assert (sig > 0).all() and sig.min() < 0.5 / 64 ** 0.5
