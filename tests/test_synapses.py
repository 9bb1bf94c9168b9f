"""Bayesian layers: batched sampling semantics, mean mode, conv, bayesianize on snnTorch/Norse nets."""
import pytest
import torch
import torch.nn.functional as F

import mesu_snn as ms


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_linear_samples_equal_a_loop_over_draws_and_share_noise_over_batch_and_time():
    layer = ms.BayesLinear(7, 5)
    x = torch.randn(6, 3, 7)                                   # (T, B, in)
    y = layer(x, samples=4, generator=_gen(1))                 # (M, T, B, out)
    assert y.shape == (4, 6, 3, 5)
    ew, eb = layer.draw_noise(4, _gen(1))                      # the same draws
    for m in range(4):
        w = layer.weight_mu + layer.weight_sigma * ew[m]
        b = layer.bias_mu + layer.bias_sigma * eb[m]
        torch.testing.assert_close(y[m], F.linear(x, w, b))
    # one draw per sample, shared by every batch element and time step
    same = torch.ones(6, 3, 7)
    ys = layer(same, samples=4, generator=_gen(2))
    assert torch.allclose(ys, ys[:, :1, :1].expand_as(ys))
    assert not torch.allclose(ys[0], ys[1])                    # samples differ


def test_linear_sampled_input_and_mean_mode():
    layer = ms.BayesLinear(4, 3)
    x = torch.randn(5, 2, 4)                                   # (M, B, in)
    y = layer(x, sampled_input=True, generator=_gen(3))
    ew, eb = layer.draw_noise(5, _gen(3))
    for m in range(5):
        torch.testing.assert_close(y[m], F.linear(x[m], layer.weight_mu + layer.weight_sigma * ew[m],
                                                  layer.bias_mu + layer.bias_sigma * eb[m]))
    layer.mode = "mean"
    torch.testing.assert_close(layer(x[0]), F.linear(x[0], layer.weight_mu, layer.bias_mu))
    assert layer(x[0], samples=8).shape == (1, 2, 3)           # mean mode: one "sample"
    torch.testing.assert_close(layer(x, sampled_input=True), F.linear(x, layer.weight_mu, layer.bias_mu))


def test_gradients_reach_mu_and_sigma_as_reparameterisation():
    layer = ms.BayesLinear(3, 2, bias=False)
    x = torch.randn(4, 3)
    y = layer(x, samples=2, generator=_gen(4))
    y.sum().backward()
    ew, _ = layer.draw_noise(2, _gen(4))
    gw = x.sum(0).expand(2, 2, 3)                              # dL/dw for each sample
    torch.testing.assert_close(layer.weight_mu.grad, gw.sum(0))
    torch.testing.assert_close(layer.weight_sigma.grad, (gw * ew).sum(0))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_samples_equal_a_loop_over_draws(groups):
    conv = ms.BayesConv2d(4, 6, 3, padding=1, stride=1, groups=groups)
    x = torch.randn(2, 3, 4, 9, 9)                             # (T, B, C, H, W)
    y = conv(x, samples=3, generator=_gen(5))
    assert y.shape == (3, 2, 3, 6, 9, 9)
    ew, eb = conv.draw_noise(3, _gen(5))
    xs = torch.randn(3, 2, 3, 4, 9, 9)                         # sampled input (M, T, B, C, H, W)
    ys = conv(xs, sampled_input=True, generator=_gen(5))
    for m in range(3):
        w = conv.weight_mu + conv.weight_sigma * ew[m]
        b = conv.bias_mu + conv.bias_sigma * eb[m]
        ref = F.conv2d(x.reshape(-1, 4, 9, 9), w, b, padding=1, groups=groups).reshape(2, 3, 6, 9, 9)
        torch.testing.assert_close(y[m], ref, atol=1e-5, rtol=1e-5)
        ref_s = F.conv2d(xs[m].reshape(-1, 4, 9, 9), w, b, padding=1, groups=groups).reshape(2, 3, 6, 9, 9)
        torch.testing.assert_close(ys[m], ref_s, atol=1e-5, rtol=1e-5)


def test_sampled_weights_context_folds_samples_into_the_batch():
    layer = ms.BayesLinear(4, 3)
    x = torch.randn(2, 4)
    with ms.sampled_weights(layer, samples=3, generator=_gen(6)):
        folded = ms.unfold_samples(layer(ms.fold_samples(x, 3)), 3)      # (3, 2, 3)
        direct = layer(x, samples=3)                                      # reuses the frozen draws
        again = ms.unfold_samples(layer(ms.fold_samples(x, 3)), 3)
    torch.testing.assert_close(folded, direct)
    torch.testing.assert_close(folded, again)                             # frozen across calls (time steps)
    assert layer._frozen is None
    with pytest.raises(ValueError, match="multiple of 3"):
        with ms.sampled_weights(layer, samples=3):
            layer(torch.randn(4, 4))


def test_bad_inputs_name_the_expected_shape():
    layer = ms.BayesLinear(4, 3)
    with pytest.raises(ValueError, match=r"in_features=4"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(M=2"):
        layer(torch.randn(3, 2, 4), samples=2, sampled_input=True)
    with pytest.raises(ValueError, match="samples"):
        layer(torch.randn(3, 4), samples=0)
    net = ms.SpikingMLP([4, 6, 3])
    with pytest.raises(ValueError, match=r"\(T, B, 4\)"):
        net(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"C=2"):
        ms.BayesConv2d(2, 3, 3)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        ms.set_mode(net, "average")


def test_spiking_mlp_shapes_modes_and_determinism():
    net = ms.SpikingMLP([10, 8, 4], readout="count")
    x = (torch.rand(6, 5, 10) < 0.5).float()
    out = net(x, samples=3, generator=_gen(7))
    assert out.shape == (3, 5, 4)
    assert ((out >= 0) & (out <= 6)).all() and torch.equal(out, out.round())   # spike counts over T=6
    torch.testing.assert_close(out, net(x, samples=3, generator=_gen(7)))
    net.mean_mode()
    assert net(x, samples=3).shape == (1, 5, 4)
    conv = ms.SpikingConvNet((2, 12, 12), (2, 4, 8), 5)
    assert conv(torch.rand(3, 2, 2, 12, 12), samples=2).shape == (2, 2, 5)


def test_bayesianize_a_real_snntorch_network():
    snn = pytest.importorskip("snntorch")
    from snntorch import surrogate

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(12, 8)
            self.lif1 = snn.Leaky(beta=0.875, spike_grad=surrogate.fast_sigmoid(slope=25))
            self.fc2 = torch.nn.Linear(8, 3)
            self.lif2 = snn.Leaky(beta=0.875, spike_grad=surrogate.fast_sigmoid(slope=25))

        def forward(self, x):                                  # x (T, B, 12) -> spike counts (B, 3)
            m1, m2 = self.lif1.reset_mem(), self.lif2.reset_mem()
            count = 0
            for t in range(x.shape[0]):
                s1, m1 = self.lif1(self.fc1(x[t]), m1)
                s2, m2 = self.lif2(self.fc2(s1), m2)
                count = count + s2
            return count

    net = Net()
    x = (torch.rand(20, 4, 12) < 0.6).float() * 1.5
    ref = net(x)
    w1, b1 = net.fc1.weight.detach().clone(), net.fc1.bias.detach().clone()
    ms.bayesianize(net, sigma_init=0.3)
    assert isinstance(net.fc1, ms.BayesLinear) and isinstance(net.fc2, ms.BayesLinear)
    torch.testing.assert_close(net.fc1.weight_mu.detach(), w1)
    torch.testing.assert_close(net.fc1.bias_mu.detach(), b1)
    torch.testing.assert_close(net.fc1.weight_sigma.detach(), torch.full_like(w1, 0.3 / 12 ** 0.5))
    ms.set_mode(net, "mean")
    torch.testing.assert_close(net(x), ref)                    # w = μ reproduces the original network
    ms.set_mode(net, "sample")
    M = 3
    with ms.sampled_weights(net, samples=M, generator=_gen(8)):
        out = ms.unfold_samples(net(x.reshape(20, 1, 4, 12).expand(20, M, 4, 12).reshape(20, M * 4, 12)), M)
        noise = {name: layer._frozen[1] for name, layer in (("fc1", net.fc1), ("fc2", net.fc2))}
    assert out.shape == (M, 4, 3)
    # each sample equals the original network run with that sample's fixed weights over all T steps
    ref_net = Net()
    for m in range(M):
        with torch.no_grad():
            for name in ("fc1", "fc2"):
                lay, (ew, eb) = getattr(net, name), noise[name]
                getattr(ref_net, name).weight.copy_(lay.weight_mu + lay.weight_sigma * ew[m])
                getattr(ref_net, name).bias.copy_(lay.bias_mu + lay.bias_sigma * eb[m])
        torch.testing.assert_close(out[m], ref_net(x))
    # and MESU trains it in one line
    opt = ms.MESU(net, memory=1000, sigma_prior=0.1)
    y = torch.tensor([0, 1, 2, 0])
    with ms.sampled_weights(net, samples=M):
        logits = ms.unfold_samples(net(x.repeat(1, M, 1)), M)
    ms.nll_loss(logits, y).backward()
    before = net.fc1.weight_sigma.detach().clone()
    opt.step()
    assert not torch.equal(before, net.fc1.weight_sigma)


def test_bayesianize_a_norse_network():
    norse = pytest.importorskip("norse.torch")
    model = norse.SequentialState(torch.nn.Linear(6, 5), norse.LIFBoxCell(), torch.nn.Linear(5, 2))
    x = torch.randn(4, 6)
    ref, _ = model(x)
    ms.bayesianize(model)
    ms.set_mode(model, "mean")
    out, _ = model(x)
    torch.testing.assert_close(out, ref)
    assert len(ms.bayesian_pairs(model)) == 4


def test_no_silent_redraw_between_calls_outside_a_sampling_context():
    """A tutorial-style snnTorch loop calls its layers once per step: outside sampled_weights()
    a Bayesian layer must not draw new weights at every call."""
    torch.manual_seed(0)
    layer = ms.BayesLinear(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="sampled_weights"):
        layer(x)
    layer.eval()                                   # eval(): the mean network, the same at every call
    torch.testing.assert_close(layer(x), x @ layer.weight_mu.t() + layer.bias_mu)
    assert torch.equal(layer(x), layer(x))
    layer.train()
    ms.set_mode(layer, "mean")
    assert torch.equal(layer(x), layer(x))
    ms.set_mode(layer, "sample")
    with ms.sampled_weights(layer, samples=2):     # one draw per sample, held for every call
        a, b = layer(ms.fold_samples(x, 2)), layer(ms.fold_samples(x, 2))
    assert torch.equal(a, b)
