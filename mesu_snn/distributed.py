"""Multi-process (multi-GPU) MESU training through ``torch.distributed`` (DDP).

MESU's C is the loss *summed* over the mini-batch. With the global batch split over K
processes, each computing :func:`mesu_snn.nll_loss` on its shard, the right gradient is the
*sum* of the K local gradients; DDP's default all-reduce *averages* (divides by K), which
would shrink every MESU step and the σ dynamics by K. :func:`data_parallel` wraps a model in
``DistributedDataParallel`` with an all-reduce-SUM communication hook instead.

Monte-Carlo noise: in one process the M weight draws are shared by the whole batch. To keep
that over K processes, every rank must draw the same ε: pass the generator from
:func:`shared_generator` (same seed on every rank) to ``net(x, samples=M, generator=g)``.
Then K processes give the same μ and σ as one process on the global batch (up to the
order of floating-point sums), and all replicas stay identical after every step.

Usage (``torchrun --nproc_per_node=K script.py``)::

    rank, world = init_from_env()
    net = data_parallel(ms.SpikingMLP([784, 512, 10]).to(device))
    opt = ms.MESU(net.module, memory=300_000)
    gen = shared_generator(seed=0, device=device)
    for x, y in batches:                          # global batch
        xs, ys = shard(x, 1, rank, world), shard(y, 0, rank, world)
        loss = ms.nll_loss(net(xs, samples=8, generator=gen), ys)
        opt.zero_grad(); loss.backward(); opt.step(batch_size=len(y))   # B = the *global* batch

``memory`` is in samples; tell MESU the global batch size (every rank the same B), as above.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from .bounds import check_number

__all__ = ["init_from_env", "data_parallel", "allreduce_sum_hook", "allreduce_grads_sum",
           "shared_generator", "shard"]


def init_from_env(backend: str | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment variables
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); backend: nccl with CUDA, else gloo.
    timeout: seconds a rendezvous or collective may wait before it raises (torch's default,
    30 min for gloo, when None). Returns (rank, world_size). A no-op (returns the current
    values) if already initialised."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"init_from_env: environment variables {missing} not set; launch with torchrun")
    if timeout is not None:
        check_number("init_from_env timeout", timeout, ">0", "seconds")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kw = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
    dist.init_process_group(backend, **kw)
    return dist.get_rank(), dist.get_world_size()


def allreduce_sum_hook(process_group, bucket):
    """DDP communication hook: all-reduce the gradient bucket (a ``dist.GradBucket``) with SUM,
    no division by K; returns a future of the reduced buffer. (No annotations: DDP checks them
    literally and this module uses postponed annotations.)"""
    group = process_group if process_group is not None else dist.group.WORLD
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def data_parallel(model: nn.Module, process_group=None, **ddp_kwargs) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model)`` whose gradients are summed over processes (see module doc).

    Extra keyword arguments go to DDP (e.g. ``device_ids=[local_rank]``). Build the optimizer
    on ``ddp.module`` (the pairs are the same tensors)."""
    if not dist.is_initialized():
        raise ValueError("data_parallel needs an initialised process group (call init_from_env() first)")
    ddp = nn.parallel.DistributedDataParallel(model, process_group=process_group, **ddp_kwargs)
    ddp.register_comm_hook(process_group, allreduce_sum_hook)
    return ddp


@torch.no_grad()
def allreduce_grads_sum(model: nn.Module, process_group=None) -> None:
    """Without DDP: sum every parameter's gradient over processes, in place (one flat buffer)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=process_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def shared_generator(seed: int | None = None, device="cpu") -> torch.Generator:
    """A generator seeded identically on every rank (rank 0's seed is broadcast when ``seed``
    is None), so that all ranks draw the same Monte-Carlo weight noise."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        if dist.is_initialized():
            t = torch.tensor([seed], dtype=torch.int64,
                             device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(t, src=0)
            seed = int(t.item())
    return torch.Generator(device=device).manual_seed(int(seed))


def shard(x: torch.Tensor, dim: int, rank: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch along ``dim`` (sizes differ by at most 1)."""
    rank = dist.get_rank() if rank is None else rank
    world = dist.get_world_size() if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    n = x.shape[dim]
    if n < world:
        raise ValueError(f"cannot shard {n} examples over {world} processes")
    start, stop = rank * n // world, (rank + 1) * n // world
    return x.narrow(dim, start, stop - start)
