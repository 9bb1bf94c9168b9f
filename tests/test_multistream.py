"""multistream.StackedSpikingMLP: K streams trained as one batched computation equal K runs one by one."""
from __future__ import annotations

import pytest
import torch

import mesu_snn as ms
from mesu_snn.multistream import StackedSpikingMLP, nll_loss_streams


def _nets(k, estimator, bias, readout="count"):
    nets = []
    for s in range(k):
        torch.manual_seed(100 + s)
        nets.append(ms.SpikingMLP([16, 8, 4], readout=readout, bias=bias, estimator=estimator,
                                  sigma_init=0.8, mu_init=3.0).double())
    return nets


@pytest.mark.parametrize("estimator,bias,readout", [("weights", False, "count"), ("weights", True, "membrane"),
                                                     ("local", True, "count")])
def test_stacked_equals_one_by_one(estimator, bias, readout):
    k, steps, m = 3, 6, 4
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(steps, k, 5, 1, 16, generator=g) < 0.4).double()    # a different stream of data per net
    ys = torch.randint(0, 4, (steps, k, 1), generator=g)
    nets = _nets(k, estimator, bias, readout)
    stacked = StackedSpikingMLP(nets)
    kw = dict(memory=50.0, sigma_prior=0.2, clamp_grad=0.5)
    opts = [ms.MESU(n, **kw) for n in nets]
    opt_s = ms.MESU(stacked.pairs(), **kw)
    gens = [torch.Generator().manual_seed(10 + s) for s in range(k)]
    gens_s = [torch.Generator().manual_seed(10 + s) for s in range(k)]
    spikes = 0.0
    for i in range(steps):
        for s in range(k):
            opts[s].zero_grad(set_to_none=True)
            out = nets[s](xs[i, s], samples=m, generator=gens[s])
            spikes += float(out.detach().abs().sum())
            ms.nll_loss(out, ys[i, s]).backward()
            opts[s].step()
        opt_s.zero_grad(set_to_none=True)
        out_s = stacked(xs[i], samples=m, generators=gens_s)
        assert out_s.shape == (k, m, 1, 4)
        nll_loss_streams(out_s, ys[i]).backward()
        opt_s.step()
    assert spikes > 0, "the networks must be active for the test to mean something"
    check = _nets(k, estimator, bias, readout)
    stacked.copy_into(check)
    moved = 0.0
    for a, b, c in zip(nets, check, _nets(k, estimator, bias, readout)):
        for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
            torch.testing.assert_close(pb, pa, rtol=1e-10, atol=1e-12)
            moved += float((pa - pc).detach().abs().sum())
    assert moved > 0


def test_stacked_errors():
    nets = _nets(2, "weights", False)
    with pytest.raises(ValueError, match="sizes"):
        StackedSpikingMLP([nets[0], ms.SpikingMLP([16, 9, 4], bias=False)])
    st = StackedSpikingMLP(nets)
    with pytest.raises(ValueError, match="K=2"):
        st(torch.zeros(3, 5, 1, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="generators"):
        st(torch.zeros(2, 5, 1, 16, dtype=torch.float64), generators=[torch.Generator()])
    with pytest.raises(ValueError, match="out"):
        nll_loss_streams(torch.zeros(2, 3, 1, 4), torch.zeros(3, 1))
