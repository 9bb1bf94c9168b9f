"""CUDA checks of the fast paths (skipped without a GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mesu_snn as ms
from mesu_snn.functional.lif import LIFParameters, lif_sequence
from mesu_snn.functional.mesu import mesu_update
from mesu_snn.kernels import fast_paths, fused_mesu_step, lif_sequence_fused

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("delay", [True, False])
def test_fused_lif_cuda_equals_reference(reset, delay):
    torch.manual_seed(0)
    p = LIFParameters(beta=0.9, threshold=1.0, reset=reset, reset_delay=delay)
    x = (torch.randn(25, 8, 256, 64, device="cuda") + 0.4)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    sr = lif_sequence(xr, p)
    sf = lif_sequence_fused(xf, p)
    assert sr.sum() > 0
    assert torch.equal(sr, sf)
    gy = torch.randn_like(sr)
    (sr * gy).sum().backward()
    (sf * gy).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_fused_mesu_cuda_equals_pure():
    g = torch.Generator(device="cuda").manual_seed(1)
    shapes = [(512, 784), (512,), (10, 512)]
    mus = [torch.randn(s, device="cuda", generator=g) * 0.05 for s in shapes]
    sig = [torch.rand(s, device="cuda", generator=g) * 0.02 + 0.01 for s in shapes]
    gm = [torch.randn(s, device="cuda", generator=g) * 10 for s in shapes]
    gs = [torch.randn(s, device="cuda", generator=g) * 10 for s in shapes]
    kw = dict(memory=1e4, sigma_prior=0.1)
    want = [mesu_update(*t, **kw) for t in zip(mus, sig, gm, gs)]
    fused_mesu_step(mus, sig, gm, gs, **kw)
    for (wm, ws), m, s in zip(want, mus, sig):
        torch.testing.assert_close(m, wm, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s, ws, rtol=1e-5, atol=1e-7)


def test_spiking_mlp_cuda_step_matches_reference_path():
    torch.manual_seed(2)
    net = ms.SpikingMLP([784, 128, 10], readout="count").cuda()
    x = (torch.rand(10, 32, 784, device="cuda") < 0.2).float()
    y = torch.randint(0, 10, (32,), device="cuda")
    grads = []
    for enabled in (True, False):
        net.zero_grad()
        with fast_paths(enabled):
            out = net(x, samples=4, generator=torch.Generator(device="cuda").manual_seed(3))
        ms.nll_loss(out, y).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    opt = ms.MESU(net)
    before = net.layers[0].weight_sigma.detach().clone()
    opt.step()
    assert not torch.equal(before, net.layers[0].weight_sigma)


def test_bench_cuda_tiny(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench
    assert bench.main(["--device", "cuda", "--workload", "tiny", "--rounds", "1", "--iters", "2",
                       "--warmup", "1", "--only", "naive,mesu_snn_delayed,stream1_mesu_snn_graphed",
                       "--out-dir", str(tmp_path)]) == 0
    md = next(tmp_path.glob("cuda_*.md")).read_text()
    assert "mesu_snn_delayed" in md and "error" not in md


@pytest.mark.parametrize("compiled", [False, True])
def test_graphed_train_step_trains_and_guards(compiled):
    from mesu_snn.rules import GraphedTrainStep
    torch.manual_seed(5)
    net = ms.SpikingMLP([784, 64, 10], readout="count").cuda()
    opt = ms.MESU(net, memory=1e4)
    x = (torch.rand(10, 1, 784, device="cuda") < 0.3).float()
    y = torch.randint(0, 10, (1,), device="cuda")
    before = [p.detach().clone() for p in net.parameters()]
    step = GraphedTrainStep(net, opt, x, y, samples=8, compile=compiled)
    for p, b in zip(net.parameters(), before):      # warm-up was undone
        assert torch.equal(p, b)
    for _ in range(20):
        loss = step(x, y)
    torch.cuda.synchronize()
    assert torch.isfinite(loss) and step.skipped_steps == 0
    assert not torch.equal(net.layers[0].weight_sigma, before[1])
    snap = [p.detach().clone() for p in net.parameters()]
    step(torch.full_like(x, float("nan")), y)
    torch.cuda.synchronize()
    assert step.skipped_steps == 1
    for p, s in zip(net.parameters(), snap):
        assert torch.equal(p, s)
    with pytest.raises(ValueError, match="captured"):
        step(x[:5], y)
