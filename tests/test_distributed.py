"""Two gloo processes on CPU give the same μ and σ as one process on the global batch."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mesu_snn as ms
from mesu_snn import distributed as msd

STEPS, M, T, B = 3, 3, 5, 9          # B = 9 over 2 ranks: shards of 4 and 5
RENDEZVOUS_S = 60                     # a rank that cannot reach the other raises after this
DEADLINE_S = 300                      # the two processes are killed after this (the test fails)


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


def _join_env(rank, world, port):
    # loopback only: gloo otherwise picks the address the hostname resolves to, which a
    # sandboxed machine may not route between its own processes (a hang, not an error)
    if os.path.isdir("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert msd.init_from_env("gloo", timeout=RENDEZVOUS_S) == (rank, world)


def _probe(rank, world, port, out_dir):
    _join_env(rank, world, port)
    try:
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        (Path(out_dir) / f"probe{rank}").write_text(repr(t.item()))
    finally:
        dist.destroy_process_group()


def _worker(rank, world, port, out_dir):
    _join_env(rank, world, port)
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


def _loopback_reason() -> str | None:
    """Why two processes here cannot talk over TCP on 127.0.0.1 (e.g. a sandbox whose
    loopback is down), or None."""
    try:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname(), timeout=5):
                pass
    except OSError as e:
        return f"no TCP on loopback: {e}"
    return None


def _spawn(fn, out_dir, deadline_s) -> str | None:
    """Run fn(rank, 2, port, out_dir) in two spawned processes; None when both exit cleanly,
    else why not. Never waits past deadline_s: the processes are killed then."""
    ctx = mp.start_processes(fn, args=(2, _free_port(), str(out_dir)), nprocs=2, join=False, start_method="spawn")
    t0 = time.monotonic()
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() - t0 > deadline_s:
                return f"still running after {deadline_s} s"
    except Exception as e:                    # a rank raised (ProcessRaisedException & co.)
        return f"{type(e).__name__}: {e}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return None


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed/gloo missing")
def test_two_gloo_processes_equal_one_process(tmp_path):
    xs, ys = _data()
    net = _model()
    single = _train(net, net, xs, ys)
    why = _loopback_reason() or _spawn(_probe, tmp_path, RENDEZVOUS_S + 60)
    if why is not None or [(tmp_path / f"probe{r}").read_text() for r in range(2)] != ["3.0", "3.0"]:
        pytest.skip(f"two gloo processes cannot all-reduce on loopback on this machine ({why})")
    why = _spawn(_worker, tmp_path, DEADLINE_S)
    assert why is None, f"distributed training on 2 gloo processes failed: {why}"
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


def _sleeper(rank, world, port, out_dir):
    time.sleep(600)


def test_spawn_kills_a_pair_that_hangs(tmp_path):
    # the guard that keeps a rendezvous which never completes from stalling the suite
    t0 = time.monotonic()
    why = _spawn(_sleeper, tmp_path, 2)
    assert why == "still running after 2 s"
    assert time.monotonic() - t0 < 60


def test_init_from_env_rejects_a_bad_timeout(monkeypatch):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for bad in (0, -5, "60", True, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
            msd.init_from_env("gloo", timeout=bad)
    assert not dist.is_initialized()
