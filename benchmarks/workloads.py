"""The benchmark rows: one training-step factory per implementation, all on one workload.

The non-mesu_snn rows are the reference definitions of ``../shared/bench/anchors.py``
(copied, parametrised by :class:`Workload` instead of module globals), so that every row
runs in the same process on the same inputs:

* ``det_snntorch`` / ``det_norse``: deterministic LIF MLP, Adam, spike-count logits.
* ``bayes_naive_snntorch``: the hand-written Bayesian snnTorch loop (Python loop over the M
  samples and the T steps, MESU in Python).
* ``bayes_batched_*``: the anchors' best sketch (all M samples in one einsum, a plain LIF
  loop, optionally ``torch.compile`` / CUDA graphs / bf16).
* ``mesu_snn_*``: :class:`mesu_snn.SpikingMLP` (readout "count") + :class:`mesu_snn.MESU`.

LIF semantics per row (the ``lif`` field of each result): snnTorch ``Leaky`` uses the
*delayed* reset (the reset from a spike at t−1 is applied at t), Norse and the anchors'
plain loop the *immediate* reset (spike and subtract in the same step). ``mesu_snn_*`` rows
run both (``_delayed`` = the library default, ``_immediate`` = like the sketch).

Every factory returns ``step()`` (one forward, backward and update) and ``forward_backward()``
(used to count the bytes autograd saves). MESU here uses the anchors' constants: N = 3e5,
σ_prior = 1, no gradient clamp, so all Bayesian rows do the same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BETA, THR, SLOPE = 0.9, 1.0, 25.0
N_MEM, SP = 3e5, 1.0


@dataclass(frozen=True)
class Workload:
    """LIF MLP n_in-hidden-n_out, T steps, batch B, M Monte-Carlo samples."""

    name: str
    n_in: int
    hidden: int
    n_out: int
    T: int
    B: int
    M: int


W_FULL = Workload("W", 784, 512, 10, 25, 256, 8)
W_SMALL = Workload("W-small", 784, 128, 10, 10, 32, 4)


def with_batch(w: Workload, batch: int) -> Workload:
    return Workload(f"{w.name}-stream{batch}", w.n_in, w.hidden, w.n_out, w.T, batch, w.M)


def make_data(w: Workload, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(w.T, w.B, w.n_in, generator=g) < 0.2).float().to(device)
    y = torch.randint(0, w.n_out, (w.B,), generator=g).to(device)
    return x, y


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g / (SLOPE * v.abs() + 1.0) ** 2


def lif_seq(cur_seq):
    """The anchors' plain LIF loop, immediate subtract reset: (T, ..., n) -> spikes."""
    mem = torch.zeros_like(cur_seq[0])
    out = []
    for t in range(cur_seq.shape[0]):
        mem = BETA * mem + cur_seq[t]
        s = _Spike.apply(mem - THR)
        mem = mem - s.detach() * THR
        out.append(s)
    return torch.stack(out)


def _steps(fwd_loss, update):
    def forward_backward():
        fwd_loss().backward()

    def step():
        forward_backward()
        update()
    return step, forward_backward


# ------------------------------------------------------------------ deterministic
def det_snntorch(w: Workload, device):
    import snntorch as snn
    from snntorch import surrogate
    l1, l2 = nn.Linear(w.n_in, w.hidden).to(device), nn.Linear(w.hidden, w.n_out).to(device)
    n1 = snn.Leaky(beta=BETA, spike_grad=surrogate.fast_sigmoid(slope=SLOPE)).to(device)
    n2 = snn.Leaky(beta=BETA, spike_grad=surrogate.fast_sigmoid(slope=SLOPE)).to(device)
    params = list(l1.parameters()) + list(l2.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    x, y = make_data(w, device)

    def loss():
        m1, m2 = n1.reset_mem(), n2.reset_mem()
        cnt = 0
        for t in range(w.T):
            s1, m1 = n1(l1(x[t]), m1)
            s2, m2 = n2(l2(s1), m2)
            cnt = cnt + s2
        opt.zero_grad(set_to_none=True)
        return F.cross_entropy(cnt, y)
    return _steps(loss, opt.step)


def det_norse(w: Workload, device):
    import norse.torch as nt
    p = nt.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(THR))
    l1, l2 = nn.Linear(w.n_in, w.hidden).to(device), nn.Linear(w.hidden, w.n_out).to(device)
    c1, c2 = nt.LIFBoxCell(p).to(device), nt.LIFBoxCell(p).to(device)
    opt = torch.optim.Adam(list(l1.parameters()) + list(l2.parameters()), 1e-3)
    x, y = make_data(w, device)

    def loss():
        s1 = s2 = None
        cnt = 0
        for t in range(w.T):
            z1, s1 = c1(l1(x[t]), s1)
            z2, s2 = c2(l2(z1), s2)
            cnt = cnt + z2
        opt.zero_grad(set_to_none=True)
        return F.cross_entropy(cnt, y)
    return _steps(loss, opt.step)


# ------------------------------------------------------------------ Bayesian + MESU
def _anchor_mesu(pairs):
    with torch.no_grad():
        for mu, sig in pairs:
            gm, gs = mu.grad, sig.grad
            s2 = sig * sig
            mu.add_(-s2 * gm + s2 * (0.0 - mu) / (N_MEM * SP ** 2))
            sig.add_(-0.5 * s2 * gs + sig * (SP ** 2 - s2) / (2 * N_MEM * SP ** 2))
            mu.grad = None
            sig.grad = None


def _bayes_params(w: Workload, device):
    def mk(o, i):
        return (nn.Parameter(torch.empty(o, i, device=device).uniform_(-1, 1) / i ** 0.5),
                nn.Parameter(torch.full((o, i), 0.5 / i ** 0.5, device=device)))
    return [mk(w.hidden, w.n_in), mk(w.n_out, w.hidden)]


def bayes_naive_snntorch(w: Workload, device):
    """A user's hand-written version: loop over MC samples, snnTorch neurons, Python MESU."""
    import snntorch as snn
    from snntorch import surrogate
    pairs = _bayes_params(w, device)
    n1 = snn.Leaky(beta=BETA, spike_grad=surrogate.fast_sigmoid(slope=SLOPE)).to(device)
    n2 = snn.Leaky(beta=BETA, spike_grad=surrogate.fast_sigmoid(slope=SLOPE)).to(device)
    x, y = make_data(w, device)

    def loss():
        logp = 0
        for _ in range(w.M):
            w1 = pairs[0][0] + pairs[0][1] * torch.randn_like(pairs[0][1])
            w2 = pairs[1][0] + pairs[1][1] * torch.randn_like(pairs[1][1])
            m1, m2 = n1.reset_mem(), n2.reset_mem()
            cnt = 0
            for t in range(w.T):
                s1, m1 = n1(F.linear(x[t], w1), m1)
                s2, m2 = n2(F.linear(s1, w2), m2)
                cnt = cnt + s2
            logp = logp + F.log_softmax(cnt, -1)
        return F.nll_loss(logp / w.M, y, reduction="sum")
    return _steps(loss, lambda: _anchor_mesu(pairs))


def bayes_batched(w: Workload, device, compile_=False, mode=None, bf16=False):
    """The anchors' sketch: all MC samples in one einsum, plain LIF loop, MESU in Python."""
    pairs = _bayes_params(w, device)
    x, y = make_data(w, device)
    dev_type = torch.device(device).type

    def fwd(x):
        w1 = pairs[0][0] + pairs[0][1] * torch.randn(w.M, *pairs[0][1].shape, device=device)
        w2 = pairs[1][0] + pairs[1][1] * torch.randn(w.M, *pairs[1][1].shape, device=device)
        cur1 = torch.einsum("tbi,moi->tmbo", x, w1)
        s1 = lif_seq(cur1)
        cur2 = torch.einsum("tmbi,moi->tmbo", s1, w2)
        s2 = lif_seq(cur2)
        return F.log_softmax(s2.sum(0), -1).mean(0)
    f = torch.compile(fwd, mode=mode) if compile_ else fwd

    def loss():
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16):
            out = f(x)
        return F.nll_loss(out.float(), y, reduction="sum")
    return _steps(loss, lambda: _anchor_mesu(pairs))


def _native(steps, native: bool):
    """(step, forward_backward) run under ``fast_paths(native=native)`` (the compiled loops on or off)."""
    from mesu_snn.kernels import fast_paths

    def wrap(f):
        def g():
            with fast_paths(True, native=native):
                f()
        return g
    return tuple(wrap(f) for f in steps)


def mesu_snn_step(w: Workload, device, reset_delay=True, compile_=False, mode=None, fused=True,
                  estimator="weights", native=True):
    """mesu_snn: SpikingMLP(readout="count") + MESU (fused update), the public API only.

    ``fused=False`` runs the reference LIF loop and per-pair update (the readable path);
    ``estimator``: the input layer's ("weights" or "local", see ``mesu_snn.BayesLinear``);
    ``native=False``: the fast paths without their compiled loops (``mesu_snn.kernels.native``)."""
    import mesu_snn as ms
    net = ms.SpikingMLP([w.n_in, w.hidden, w.n_out], beta=BETA, threshold=THR, readout="count",
                        bias=False, surrogate=("fast_sigmoid", SLOPE), estimator=estimator).to(device)
    for lif in net.neurons:
        lif.reset_delay = reset_delay
    opt = ms.MESU(net, memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    x, y = make_data(w, device)
    from mesu_snn.kernels import fast_paths

    def loss_fn(x, y):
        if fused:
            return ms.nll_loss(net(x, samples=w.M), y)
        with fast_paths(False):
            return ms.nll_loss(net(x, samples=w.M), y)
    f = torch.compile(loss_fn, mode=mode, dynamic=False) if compile_ else loss_fn

    def loss():
        opt.zero_grad(set_to_none=True)
        return f(x, y)

    def step():
        with fast_paths(fused):
            opt.step()
    steps = _steps(loss, step)
    return steps if native or not fused else _native(steps, False)


def _whole_steps(net, opt, x, y, samples):
    """(step, forward_backward) of one :class:`mesu_snn.rules.StreamingStep` update on (x, y)."""
    from mesu_snn.rules import StreamingStep
    fused = StreamingStep(net, opt, samples=samples)
    return (lambda: fused.step(x, y)), (lambda: fused.forward_backward(x, y))


def mesu_snn_step_fused(w: Workload, device, estimator="local", native=True):
    """mesu_snn_step's network and MESU, one update by :class:`mesu_snn.rules.StreamingStep` (the
    hand-written whole step the trainer uses: no autograd graph, the optimizer's own step)."""
    import mesu_snn as ms
    net = ms.SpikingMLP([w.n_in, w.hidden, w.n_out], beta=BETA, threshold=THR, readout="count",
                        bias=False, surrogate=("fast_sigmoid", SLOPE), estimator=estimator).to(device)
    opt = ms.MESU(net, memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    steps = _whole_steps(net, opt, *make_data(w, device), w.M)
    return steps if native else _native(steps, False)


def mesu_snn_graphed(w: Workload, device, compile_=False):
    """mesu_snn on CUDA: forward + backward + MESU captured in one CUDA graph
    (:class:`mesu_snn.rules.GraphedTrainStep`), replayed per batch."""
    import mesu_snn as ms
    from mesu_snn.rules import GraphedTrainStep
    net = ms.SpikingMLP([w.n_in, w.hidden, w.n_out], beta=BETA, threshold=THR, readout="count",
                        bias=False, surrogate=("fast_sigmoid", SLOPE)).to(device)
    opt = ms.MESU(net, memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    x, y = make_data(w, device)
    graphed = GraphedTrainStep(net, opt, x, y, samples=w.M, compile=compile_)

    def step():
        graphed(x, y)

    def forward_backward():
        ms.nll_loss(net(x, samples=w.M), y).backward()
    return step, forward_backward


# ------------------------------------------------------------------ Bayesian ANN (the paper's model)
class BayesANN(nn.Module):
    """Bayesian MLP n_in-hidden-n_out, ReLU, no biases, BayesLinear layers (MESU paper's ANN).
    x (B, n_in) -> (M, B, n_out) logits."""

    def __init__(self, w: Workload, estimator="weights"):
        super().__init__()
        import mesu_snn as ms
        self.l1 = ms.BayesLinear(w.n_in, w.hidden, bias=False, estimator=estimator)
        self.l2 = ms.BayesLinear(w.hidden, w.n_out, bias=False)

    def forward(self, x, samples):
        return self.l2(torch.relu(self.l1(x, samples=samples)), sampled_input=True)


def ann_data(w: Workload, device, seed: int = 0):
    """Static inputs for the ANN rows: the spike data's rates over the T steps, (B, n_in)."""
    x, y = make_data(w, device, seed)
    return x.mean(0), y


def mesu_ann_step(w: Workload, device, estimator="weights", native=True):
    """mesu_snn Bayesian ANN (:class:`BayesANN`) + MESU, M = w.M samples (``native``: as in
    :func:`mesu_snn_step`)."""
    import mesu_snn as ms
    net = BayesANN(w, estimator).to(device)
    opt = ms.MESU(net, memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    x, y = ann_data(w, device)

    def loss():
        opt.zero_grad(set_to_none=True)
        return ms.nll_loss(net(x, w.M), y)
    steps = _steps(loss, opt.step)
    return steps if native else _native(steps, False)


def mesu_ann_step_fused(w: Workload, device, estimator="local"):
    """The ANN of :func:`mesu_ann_step` as :class:`mesu_snn.BayesMLP` (same layers and init), one
    update by :class:`mesu_snn.rules.StreamingStep`."""
    import mesu_snn as ms
    net = ms.BayesMLP([w.n_in, w.hidden, w.n_out], activation="relu", bias=False, init=None, mu_init=1.0,
                      sigma_init=0.5).to(device)
    net.layers[0].estimator = estimator
    opt = ms.MESU(net, memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    return _whole_steps(net, opt, *ann_data(w, device), w.M)


def det_ann_step(w: Workload, device):
    """Deterministic ANN n_in-hidden-n_out (ReLU, no biases), Adam: the plain-network reference."""
    net = nn.Sequential(nn.Linear(w.n_in, w.hidden, bias=False), nn.ReLU(),
                        nn.Linear(w.hidden, w.n_out, bias=False)).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = ann_data(w, device)

    def loss():
        opt.zero_grad(set_to_none=True)
        return F.cross_entropy(net(x), y)
    return _steps(loss, opt.step)


# ------------------------------------------------------------------ several streams at once
def multistream_step(w: Workload, device, streams: int, stacked: bool, estimator="weights"):
    """K = ``streams`` independent SpikingMLP + MESU (seeds 0..K-1, each its own data stream):
    one step of all K, either one network after the other or as one
    :class:`mesu_snn.multistream.StackedSpikingMLP` computation."""
    import mesu_snn as ms
    from mesu_snn.multistream import StackedSpikingMLP, nll_loss_streams
    nets = []
    for s in range(streams):
        torch.manual_seed(s)
        nets.append(ms.SpikingMLP([w.n_in, w.hidden, w.n_out], beta=BETA, threshold=THR, readout="count",
                                  bias=False, surrogate=("fast_sigmoid", SLOPE), estimator=estimator).to(device))
    data = [make_data(w, device, seed=s) for s in range(streams)]
    kw = dict(memory=N_MEM, sigma_prior=SP, clamp_grad=None)
    if not stacked:
        opts = [ms.MESU(n, **kw) for n in nets]

        def forward_backward():
            for n, o, (x, y) in zip(nets, opts, data):
                o.zero_grad(set_to_none=True)
                ms.nll_loss(n(x, samples=w.M), y).backward()

        def step():
            for n, o, (x, y) in zip(nets, opts, data):
                o.zero_grad(set_to_none=True)
                ms.nll_loss(n(x, samples=w.M), y).backward()
                o.step()
        return step, forward_backward
    net = StackedSpikingMLP(nets)
    opt = ms.MESU(net.pairs(), **kw)
    xs, ys = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])

    def loss():
        opt.zero_grad(set_to_none=True)
        return nll_loss_streams(net(xs, samples=w.M), ys)
    return _steps(loss, opt.step)
