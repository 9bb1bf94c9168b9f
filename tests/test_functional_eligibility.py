"""The eligibility-trace gradient of one LIF layer equals the BPTT gradient (autograd through the
library's LIF, same surrogate) when the reset's gradient is detached, the approximation the
traces make; with the reset's gradient kept, BPTT differs (the reset is what is dropped)."""
import math

import pytest
import torch

from mesu_snn.functional import eligibility as E
from mesu_snn.functional.lif import LIFParameters, lif_sequence, lif_step
from mesu_snn.functional.surrogate import ATan, FastSigmoid


def _problem(seed=0, T=15, B=3, M=2, I=12, J=9, K=4):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, I, generator=g, dtype=torch.float64) < 0.35).double() * 1.3
    w = torch.randn(M, J, I, generator=g, dtype=torch.float64) * 0.6     # M sampled hidden weights
    wo = torch.randn(M, K, J, generator=g, dtype=torch.float64) * 0.8
    y = torch.randint(0, K, (B,), generator=g)
    return x, w, wo, y


def _bptt(x, w, wo, y, p, kappa):
    """Autograd: hidden LIF (library lif_sequence), leaky-integrator readout averaged over T, nll."""
    w = w.clone().requires_grad_(True)
    wo = wo.clone().requires_grad_(True)
    cur = torch.einsum("tbi,mji->mtbj", x, w)                           # (M, T, B, J)
    s = torch.stack([lif_sequence(c, p) for c in cur])                   # (M, T, B, J)
    po = LIFParameters(beta=kappa, reset="none")
    u = torch.stack([lif_sequence(h, po, return_membrane=True)[1] for h in torch.einsum("mtbj,mkj->mtbk", s, wo)])
    z = u.mean(1)                                                        # (M, B, K)
    loss = -(torch.log_softmax(z, -1).mean(0)[torch.arange(len(y)), y]).sum()
    loss.backward()
    return z.detach(), w.grad, wo.grad


def _online(x, w, wo, y, p, kappa):
    """The functional core, one step at a time (no stored sequence)."""
    m, j, i = w.shape
    T, B = x.shape[:2]
    xbar = torch.zeros(B, i, dtype=x.dtype)
    v = torch.zeros(m, B, j, dtype=x.dtype)
    ebar = torch.zeros(m, B, j, i, dtype=x.dtype)
    ebar_sum = torch.zeros_like(ebar)
    ubar = torch.zeros(m, B, j, dtype=x.dtype)
    ubar_sum = torch.zeros_like(ubar)
    u = torch.zeros(m, B, wo.shape[1], dtype=x.dtype)
    z_sum = torch.zeros_like(u)
    po = LIFParameters(beta=kappa, reset="none")
    for t in range(T):
        xbar = E.presynaptic_trace(xbar, x[t], p.beta, p.input_scale)
        s, v = lif_step(torch.einsum("bi,mji->mbj", x[t], w), v, p)
        psi = E.surrogate_derivative(v, p, s)
        ebar = E.filtered_eligibility(ebar, psi, xbar, kappa)
        ebar_sum = ebar_sum + ebar
        ubar = E.presynaptic_trace(ubar, s, kappa)
        ubar_sum = ubar_sum + ubar
        _, u = lif_step(torch.bmm(s, wo.transpose(1, 2)), u, po)
        z_sum = z_sum + u
    z = z_sum / T
    delta = E.readout_error(z, y)
    gw = E.eligibility_gradient(E.learning_signal(delta, wo), ebar_sum / T)
    gwo = E.trace_gradient(delta, ubar_sum / T)
    return z, gw, gwo


@pytest.mark.parametrize("reset", ["subtract", "none"])
@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("surrogate", [FastSigmoid(5.0), ATan(2.0)])
def test_eligibility_gradient_equals_bptt_with_detached_reset(reset, reset_delay, surrogate):
    x, w, wo, y = _problem()
    p = LIFParameters(beta=0.85, threshold=0.7, reset=reset, reset_delay=reset_delay, detach_reset=True,
                      surrogate=surrogate)
    z_ref, gw_ref, gwo_ref = _bptt(x, w, wo, y, p, kappa=0.9)
    z, gw, gwo = _online(x, w, wo, y, p, kappa=0.9)
    assert torch.allclose(z, z_ref, atol=1e-12)
    assert gw_ref.abs().max() > 1e-3                                    # a non-trivial gradient
    assert torch.allclose(gw, gw_ref, rtol=1e-5, atol=1e-8)
    assert torch.allclose(gwo, gwo_ref, rtol=1e-5, atol=1e-8)


def test_the_reset_contribution_is_dropped():
    """With the reset's gradient kept (detach_reset=False) BPTT differs from the traces: the
    traces implement the detached-reset approximation (e-prop's), not the full gradient."""
    x, w, wo, y = _problem(seed=3)
    kept = LIFParameters(beta=0.85, threshold=0.7, reset="subtract", detach_reset=False, surrogate=FastSigmoid(5.0))
    _, gw_ref, _ = _bptt(x, w, wo, y, kept, kappa=0.9)
    _, gw, _ = _online(x, w, wo, y, kept, kappa=0.9)
    rel = float((gw - gw_ref).norm() / gw_ref.norm())
    assert rel > 1e-3                      # measurably different
    cos = float((gw * gw_ref).sum() / (gw.norm() * gw_ref.norm()))
    assert cos > 0.5                       # but still a descent-aligned approximation


def test_presynaptic_trace_is_the_membrane_filter():
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])
    tr = torch.zeros(())
    seen = []
    for t in range(4):
        tr = E.presynaptic_trace(tr, x[t], 0.5, 2.0)
        seen.append(float(tr))
    assert seen == [2.0, 1.0, 0.5, 2.25]


def test_surrogate_derivative_needs_spikes_without_reset_delay():
    p = LIFParameters(reset_delay=False)
    with pytest.raises(ValueError, match="spikes"):
        E.surrogate_derivative(torch.zeros(3), p)


def test_readout_error_is_the_nll_gradient():
    from mesu_snn.losses import nll_loss
    z = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2])
    nll_loss(z, y).backward()
    assert torch.allclose(E.readout_error(z.detach(), y), z.grad, atol=1e-12)


def test_mc_gradients_sigma_is_noise_times_weight_gradient():
    g = torch.randn(4, 3, 2)
    eps = torch.randn(4, 3, 2)
    gmu, gsig = E.mc_gradients(g, eps)
    assert torch.allclose(gmu, g.sum(0))
    assert torch.allclose(gsig, (eps * g).sum(0))
    assert E.mc_gradients(g, None)[1] is None


def test_random_feedback_is_seeded_and_leaves_the_global_rng():
    state = torch.random.get_rng_state()
    a = E.random_feedback(10, 50, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, E.random_feedback(10, 50, seed=7))
    assert not torch.equal(a, E.random_feedback(10, 50, seed=8))
    assert abs(float(a.std()) - 1 / math.sqrt(50)) < 0.03


def test_check_online_lif_accepts_zero_reset_and_per_neuron_beta_refuses_2d_beta():
    E.check_online_lif(LIFParameters(reset="zero"))
    E.check_online_lif(LIFParameters(beta=torch.tensor([0.9, 0.8])))
    with pytest.raises(ValueError, match="1-D"):
        E.check_online_lif(LIFParameters(beta=torch.full((2, 2), 0.9)))
    assert E.scalar_beta(LIFParameters(beta=torch.tensor([0.7, 0.7]))) == pytest.approx(0.7)
    assert E.scalar_beta(LIFParameters(beta=torch.tensor([0.7, 0.8]))) is None
    assert E.needs_synaptic_trace(LIFParameters(reset="zero"))
    assert E.needs_synaptic_trace(LIFParameters(beta=torch.tensor([0.7, 0.8])))
    assert not E.needs_synaptic_trace(LIFParameters())


def _online_synaptic(x, w, wo, y, p, kappa, zero_at_spike=True):
    """Per-synapse trace x̃_ji (decay β_j (1 − s_j(t−1))), one step at a time."""
    m, j, i = w.shape
    T, B = x.shape[:2]
    tr = torch.zeros(m, B, j, i, dtype=x.dtype)
    v = torch.zeros(m, B, j, dtype=x.dtype)
    ebar = torch.zeros(m, B, j, i, dtype=x.dtype)
    ebar_sum = torch.zeros_like(ebar)
    s_prev = None
    po = LIFParameters(beta=kappa, reset="none")
    u = torch.zeros(m, B, wo.shape[1], dtype=x.dtype)
    z_sum = torch.zeros_like(u)
    for t in range(T):
        cur = torch.einsum("bi,mji->mbj", x[t], w)
        decay = E.synaptic_trace_decay(p if zero_at_spike else p.with_(reset="subtract"), s_prev)
        tr = E.synaptic_trace(tr, x[t], decay, p.input_scale)
        v_prev = v
        s, v = lif_step(cur, v, p)
        pre = E.pre_reset_membrane(v.unsqueeze(0), cur.unsqueeze(0), v_prev, p, time_dim=0)[0]
        psi = E.surrogate_derivative(v, p, s, pre)
        E.filtered_synaptic_eligibility_(ebar, psi, tr, kappa)
        ebar_sum += ebar
        s_prev = s
        _, u = lif_step(torch.bmm(s, wo.transpose(1, 2)), u, po)
        z_sum = z_sum + u
    z = z_sum / T
    delta = E.readout_error(z, y)
    return z, E.eligibility_gradient(E.learning_signal(delta, wo), ebar_sum / T)


@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, -0.2])
def test_zero_reset_needs_the_trace_zeroed_at_the_postsynaptic_spike(reset_delay, v_reset):
    """reset="zero" with the reset detached: BPTT still differentiates (1 − s)·v, so the trace
    must be per synapse and zeroed at the postsynaptic spike; the un-zeroed (per presynaptic
    neuron) trace is measurably different."""
    x, w, wo, y = _problem(seed=1)
    beta = torch.linspace(0.6, 0.95, w.shape[1], dtype=torch.float64)
    for b in (0.85, beta):                                 # a scalar and a per-neuron β
        p = LIFParameters(beta=b, threshold=0.7, reset="zero", reset_delay=reset_delay, v_reset=v_reset,
                          surrogate=FastSigmoid(5.0))
        z_ref, gw_ref, _ = _bptt(x, w, wo, y, p, kappa=0.9)
        z, gw = _online_synaptic(x, w, wo, y, p, kappa=0.9)
        assert torch.allclose(z, z_ref, atol=1e-12)
        assert gw_ref.abs().max() > 1e-3
        assert torch.allclose(gw, gw_ref, rtol=1e-5, atol=1e-8)
        _, gw_flat = _online_synaptic(x, w, wo, y, p, kappa=0.9, zero_at_spike=False)
        assert float((gw_flat - gw_ref).norm() / gw_ref.norm()) > 1e-2


def test_pre_reset_membrane_and_count_error():
    p = LIFParameters(beta=0.5, reset="zero", reset_delay=False, input_scale=2.0)
    cur = torch.tensor([[0.3], [0.4], [0.1]])
    v, vs = torch.zeros(1), []
    for t in range(3):
        _, v = lif_step(cur[t], v, p)
        vs.append(v)
    pre = E.pre_reset_membrane(torch.stack(vs), cur, None, p, time_dim=0)
    assert torch.allclose(pre.flatten(), torch.tensor([0.6, 1.1, 0.2]))   # 2·0.3; 0.3 + 0.8 (fires, -> 0); 0 + 0.2
    assert torch.equal(E.count_error(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])), torch.tensor([1.0, -3.0]))
    xr, er = E.trace_ranges(LIFParameters(beta=0.5, surrogate=FastSigmoid(5.0)), 2.0, 10 ** 6, 0.0)
    assert xr == pytest.approx(4.0) and er == pytest.approx(4.0)


@pytest.mark.parametrize("time_dim", [0, 1])
def test_presynaptic_trace_chunk_equals_the_step_loop(time_dim):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 7, 2, 5, generator=g, dtype=torch.float64)          # time on dim 1
    x = x if time_dim == 1 else x.movedim(1, 0)
    tr0 = torch.rand(3, 2, 5, generator=g, dtype=torch.float64)
    out = E.presynaptic_trace_chunk(tr0, x, 0.8, 1.5, time_dim=time_dim)
    tr, ref = tr0, []
    for t in range(7):
        tr = E.presynaptic_trace(tr, x.select(time_dim, t), 0.8, 1.5)
        ref.append(tr)
    assert torch.allclose(out, torch.stack(ref, time_dim), atol=1e-12)
    zero = E.presynaptic_trace_chunk(None, x, 0.8, 1.5, time_dim=time_dim)
    assert torch.allclose(zero, E.presynaptic_trace_chunk(torch.zeros_like(tr0), x, 0.8, 1.5, time_dim=time_dim))
