"""A whole training step without host synchronisation, and its CUDA-graph capture.

:func:`guarded_update` applies a MESU/BGD optimizer's update to all its pairs with the
non-finite guard evaluated *on the device*: the new μ and σ are computed, then written through
``torch.where(ok, new, old)`` where ``ok`` says every gradient and every new value is finite
and every new σ > 0 (the eager step's check), so a bad step leaves μ and σ unchanged without
the host ever reading ``ok``. Being sync-free, it can be captured
in a CUDA graph. It runs (and is tested) on CPU as well.

:class:`GraphedTrainStep` captures forward, backward and update of one mini-batch shape in
one ``torch.cuda.CUDAGraph`` and replays it per batch: the streaming path (batch 1, one MESU
update per sample) is launch-bound, and a replay costs one launch. CUDA only; it is exercised
by ``tests/test_cuda.py`` and ``benchmarks/bench.py --device cuda`` on a GPU machine and has
not been measured on the machine this was written on (no GPU).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..losses import nll_loss
from ..kernels.fused_update import bgd_factors, mesu_deltas

__all__ = ["guarded_update", "GraphedTrainStep"]


def _grads(ps: list) -> list:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]


@torch.no_grad()
def guarded_update(optimizer, batch_size: int | None = None) -> torch.Tensor:
    """One step of a :class:`~mesu_snn.MESU` / :class:`~mesu_snn.BGD` optimizer, in place,
    skipped on the device if any gradient is NaN/Inf or the step would make a μ/σ non-finite
    or a σ <= 0. Returns ``ok`` (0-dim bool tensor).
    batch_size: MESU's B (samples in the summed loss; default: each group's ``batch_size``).

    Does not advance ``group["step"]`` nor ``optimizer.skipped_steps`` (the caller counts)."""
    from .bgd import BGD
    from .mesu import MESU
    if not isinstance(optimizer, (MESU, BGD)):
        raise ValueError(f"guarded_update supports MESU and BGD, got {type(optimizer).__name__}")
    all_ps = [p for g in optimizer.param_groups for p in g["params"]]
    grads = _grads(all_ps)
    ok = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    updates = []                       # (params, new values): written only where ``ok``
    for g in optimizer.param_groups:
        ps = g["params"]
        gr = _grads(ps)
        if g["kind"] == "plain":
            new = torch._foreach_add(ps, gr, alpha=-g["lr"])
            ok = ok & torch.stack([torch.isfinite(n).all() for n in new]).all()
            updates.append((ps, new))
            continue
        mus, sigmas = ps[0::2], ps[1::2]
        if isinstance(optimizer, MESU):
            if any(isinstance(g[k], torch.Tensor) for k in ("sigma_prior", "mu_prior", "memory")):
                raise ValueError("guarded_update needs scalar MESU hyperparameters")
            dmu, dsig = mesu_deltas(mus, sigmas, gr[0::2], gr[1::2], memory=g["memory"],
                                    sigma_prior=g["sigma_prior"], mu_prior=g["mu_prior"], lr_mu=g["lr_mu"],
                                    lr_sigma=g["lr_sigma"], clamp_grad=g["clamp_grad"],
                                    batch_size=g["batch_size"] if batch_size is None else batch_size)
            new_mu, new_sig = torch._foreach_add(mus, dmu), torch._foreach_add(sigmas, dsig)
        else:
            dmu, root = bgd_factors(mus, sigmas, gr[0::2], gr[1::2])
            new_mu, new_sig = torch._foreach_add(mus, dmu, alpha=-g["lr"]), torch._foreach_mul(sigmas, root)
        # the same check as the eager step: every new μ finite, every new σ finite and > 0
        checks = [torch.isfinite(n).all() for n in new_mu] + [((n > 0) & (n < float("inf"))).all() for n in new_sig]
        ok = ok & torch.stack(checks).all()
        updates += [(mus, new_mu), (sigmas, new_sig)]
    for ps, new in updates:
        torch._foreach_copy_(ps, [torch.where(ok, n, p) for n, p in zip(new, ps)])
    return ok


class GraphedTrainStep:
    """Forward + backward + MESU/BGD update of ``net`` captured as one CUDA graph.

    ``step = GraphedTrainStep(net, opt, x, y, samples=8)``; then ``loss = step(x, y)`` for
    each new batch of the same shapes (copied into static buffers; the graph is replayed).
    Monte-Carlo noise comes from the default CUDA generator (fresh on every replay).
    ``loss_fn(out, y)`` defaults to :func:`mesu_snn.nll_loss`. ``compile=True`` runs the forward
    through ``torch.compile`` (default mode) before capture. Warm-up iterations run on a
    side stream and are undone (μ, σ restored) before capture. ``skipped_steps`` counts
    steps skipped by the non-finite guard (reading it synchronises).
    """

    def __init__(self, net: torch.nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, samples: int,
                 loss_fn: Callable = nll_loss, warmup: int = 3, compile: bool = False):
        if not (x.is_cuda and torch.cuda.is_available()):
            raise ValueError("GraphedTrainStep needs CUDA tensors (use the eager step on CPU)")
        self.net, self.optimizer, self.samples, self.loss_fn = net, optimizer, samples, loss_fn

        def forward_loss(xs, ys):
            return loss_fn(net(xs, samples=samples), ys)
        # compile=True: inductor fuses the LIF time loop (it traces the reference loop), then the
        # compiled kernels are captured with the backward and the update in the same graph
        self._forward_loss = torch.compile(forward_loss, dynamic=False) if compile else forward_loss
        self.x, self.y = x.clone(), y.clone()
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._skipped = torch.zeros((), dtype=torch.int64, device=x.device)
        saved = [p.detach().clone() for p in self.params]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for p, s in zip(self.params, saved):
                p.copy_(s)
        self._skipped.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._body()

    def _body(self) -> torch.Tensor:
        for p in self.params:      # backward then allocates the gradients (inside the graph's pool)
            p.grad = None
        loss = self._forward_loss(self.x, self.y)
        loss.backward()
        ok = guarded_update(self.optimizer, batch_size=int(self.y.shape[0]))
        self._skipped.add_((~ok).to(torch.int64))
        return loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(f"GraphedTrainStep was captured for x {tuple(self.x.shape)}, y {tuple(self.y.shape)}; "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}")
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        for g in self.optimizer.param_groups:
            g["step"] += 1
        return self.loss

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped.item())
