"""Data-parallel MESU training with torchrun (CPU gloo or GPU nccl).

    torchrun --nproc_per_node=2 benchmarks/ddp_mesu.py --steps 20
    torchrun --nproc_per_node=4 benchmarks/ddp_mesu.py --device cuda --batch 1024

Each step draws one global batch (the same on every rank, from a shared seed), every rank
trains on its shard, gradients are summed over ranks (:func:`mesu_snn.distributed.data_parallel`),
and all ranks draw the same Monte-Carlo noise (:func:`mesu_snn.distributed.shared_generator`),
so the run equals one process on the global batch. Rank 0 prints the time per step and a
checksum of μ and σ; ``--check`` re-runs the same steps in one process on rank 0 and compares.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

import mesu_snn as ms
from mesu_snn import distributed as msd


def batches(steps, T, B, n_in, n_out, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = (torch.rand(T, B, n_in, generator=g) < 0.2).float()
        yield x.to(device), torch.randint(0, n_out, (B,), generator=g).to(device)


def train(net, opt_model, args, device, rank=0, world=1):
    opt = ms.MESU(opt_model, memory=args.memory, sigma_prior=args.sigma_prior)
    gen = msd.shared_generator(seed=args.seed, device=device)
    times = []
    for x, y in batches(args.steps, args.T, args.batch, args.sizes[0], args.sizes[-1], device, args.seed):
        t0 = time.perf_counter()
        xs, ys = msd.shard(x, 1, rank, world), msd.shard(y, 0, rank, world)
        loss = ms.nll_loss(net(xs, samples=args.samples, generator=gen), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 10])
    ap.add_argument("--T", type=int, default=25)
    ap.add_argument("--batch", type=int, default=256, help="global batch size")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--memory", type=float, default=3e5)
    ap.add_argument("--sigma-prior", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check", action="store_true", help="rank 0 compares with a one-process run")
    args = ap.parse_args(argv)
    rank, world = msd.init_from_env("nccl" if args.device == "cuda" else "gloo")
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if args.device == "cuda" else "cpu")
    torch.manual_seed(args.seed)
    net = ms.SpikingMLP(args.sizes, readout="count").to(device)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    ddp = msd.data_parallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    times = train(ddp, net, args, device, rank, world)
    if rank == 0:
        sig = sum(float(s.detach().sum()) for _, _, s in ms.bayesian_pairs(net))
        mu = sum(float(m.detach().sum()) for _, m, _ in ms.bayesian_pairs(net))
        med = sorted(times[1:] or times)[len(times[1:] or times) // 2]
        print(f"world={world} global_batch={args.batch} median {med * 1e3:.2f} ms/step "
              f"({args.batch / med:.0f} samples/s); sum(mu)={mu:.6f} sum(sigma)={sig:.6f}", flush=True)
        if args.check:
            ref = ms.SpikingMLP(args.sizes, readout="count").to(device)
            ref.load_state_dict(init)
            train(ref, ref, args, device)
            worst = max(float((a - b).abs().max()) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))
            print(f"max |Δ| vs one process on the global batch: {worst:.3e}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
