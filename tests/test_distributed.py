"""Two gloo processes on CPU give the same μ and σ as one process on the global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mesu_snn as ms
from mesu_snn import distributed as msd

STEPS, M, T, B = 3, 3, 5, 9          # B = 9 over 2 ranks: shards of 4 and 5


def _data():
    g = torch.Generator().manual_seed(7)
    xs = [(torch.rand(T, B, 12, generator=g) < 0.4).double() for _ in range(STEPS)]
    ys = [torch.randint(0, 3, (B,), generator=g) for _ in range(STEPS)]
    return xs, ys


def _model():
    torch.manual_seed(11)
    return ms.SpikingMLP([12, 10, 3], readout="count").double()


def _train(net, opt_model, xs, ys, rank=0, world=1, manual=False):
    opt = ms.MESU(opt_model, memory=50.0, sigma_prior=0.2, clamp_grad=None)
    gen = msd.shared_generator(seed=123)
    for x, y in zip(xs, ys):
        xl, yl = msd.shard(x, 1, rank, world), msd.shard(y, 0, rank, world)
        loss = ms.nll_loss(net(xl, samples=M, generator=gen), yl)
        opt.zero_grad()
        loss.backward()
        if manual:
            msd.allreduce_grads_sum(opt_model)
        opt.step()
    return {k: v.detach().clone() for k, v in opt_model.state_dict().items()}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert msd.init_from_env("gloo") == (rank, world)
    try:
        xs, ys = _data()
        net = _model()
        ddp = msd.data_parallel(net)
        summed = _train(ddp, net, xs, ys, rank, world)
        net2 = _model()
        manual = _train(net2, net2, xs, ys, rank, world, manual=True)
        net3 = _model()
        averaged = _train(torch.nn.parallel.DistributedDataParallel(net3), net3, xs, ys, rank, world)
        torch.save(dict(summed=summed, manual=manual, averaged=averaged), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed/gloo missing")
def test_two_gloo_processes_equal_one_process(tmp_path):
    xs, ys = _data()
    net = _model()
    single = _train(net, net, xs, ys)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    names = [k for k in single if k.endswith("_mu") or k.endswith("_sigma")]
    assert len(names) == 8
    start = _model().state_dict()
    for k in names:
        assert not torch.allclose(single[k], start[k]), f"{k} did not move"
        for r in ranks:
            torch.testing.assert_close(r["summed"][k], single[k], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(r["manual"][k], single[k], rtol=1e-10, atol=1e-12)
    # DDP's default averaging divides the MESU gradient by K: the σ would differ
    assert any(not torch.allclose(ranks[0]["averaged"][k], single[k], rtol=1e-6, atol=1e-9) for k in names)


def test_shard_and_errors():
    x = torch.arange(10).reshape(1, 10)
    parts = [msd.shard(x, 1, r, 3) for r in range(3)]
    assert [p.shape[1] for p in parts] == [3, 3, 4]
    assert torch.equal(torch.cat(parts, 1), x)
    with pytest.raises(ValueError, match="rank"):
        msd.shard(x, 1, 3, 3)
    with pytest.raises(ValueError, match="cannot shard"):
        msd.shard(x, 1, 0, 11)
    g1, g2 = msd.shared_generator(5), msd.shared_generator(5)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="process group"):
            msd.data_parallel(torch.nn.Linear(2, 2))
        env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
        try:
            with pytest.raises(ValueError, match="torchrun"):
                msd.init_from_env()
        finally:
            os.environ.update(env)
